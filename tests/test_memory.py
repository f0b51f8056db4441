"""The image encoder's memory under a request of decompression-bomb-sized images: the pixel
budget (search.limits.MAX_REQUEST_PIXELS) bounds it, and it is given back afterwards.

Measured in a fresh process (VmRSS / VmHWM from /proc) so that nothing else the test session
allocated counts: 32 single-colour 7990x7990 PNGs (a few KB each, 64 Mpx decoded) in one
`embed` call, as one `/index` request brings them to the Flow's image encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from demo import BASE_MODEL_DIR, REPO
from search.limits import MAX_REQUEST_PIXELS

# The bound this test holds the encoder to: peak RSS over its idle RSS, in MiB.
PEAK_OVER_IDLE_MIB = 1_536
# What may stay allocated after the request (allocator caches, torch's workspace).
KEPT_AFTER_MIB = 256

SCRIPT = """
import io, json, sys
from PIL import Image
from imagepairs.documents import Document
from search.encoders import ImageEncoder

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024

encoder = ImageEncoder(sys.argv[1], num_threads=1)
small = io.BytesIO()
Image.new("RGB", (64, 64), (1, 2, 3)).save(small, "PNG")
encoder.embed([Document(id="warm", blob=small.getvalue())], indexing=True)
bomb = io.BytesIO()
Image.new("RGB", (7990, 7990), (200, 30, 30)).save(bomb, "PNG")
idle = status("VmRSS")
docs = [Document(id=str(i), blob=bomb.getvalue()) for i in range(32)]
encoder.embed(docs, indexing=True)
print(json.dumps({
    "idle": idle, "peak": status("VmHWM"), "after": status("VmRSS"),
    "png_bytes": len(bomb.getvalue()),
    "embedded": sum(d.embedding is not None for d in docs),
    "errors": sorted({d.error for d in docs if d.error}),
}))
"""


@pytest.mark.slow
def test_32_bomb_sized_images_stay_within_the_memory_bound_and_give_it_back():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(BASE_MODEL_DIR / "clip-vision")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["png_bytes"] < 1_000_000  # tiny on the wire, 64 Mpx decoded
    # the budget admits MAX_REQUEST_PIXELS worth of images; the others are refused by it
    assert result["embedded"] == MAX_REQUEST_PIXELS // (7990 * 7990)
    assert len(result["errors"]) == 1 and "MAX_REQUEST_PIXELS" in result["errors"][0]
    assert result["peak"] - result["idle"] <= PEAK_OVER_IDLE_MIB, result
    assert result["after"] - result["idle"] <= KEPT_AFTER_MIB, result
