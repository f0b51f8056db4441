"""The demo's last stage: serve the fine-tuned towers with `flow.yml`, index, search.

Indexes the held-out images over gRPC, sends held-out captions as text queries over HTTP
(Jina's `POST /search` convention), prints the top hits, and shuts the Flow down.
"""

from __future__ import annotations

import csv
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FLOW_YML = Path(__file__).resolve().parents[1] / "flow.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def environment(**values: str):
    """Set env vars for the Flow YAML's `${{ ENV.X }}` while it loads; restore them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read_captions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(image name, caption) rows of a Flickr8k-style captions file."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [(row[0], ",".join(row[1:])) for row in rows[1:] if row]


def search_demo(run_dir: Path, data: Any, queries: int = 5, limit: int = 3) -> dict[str, Any]:
    import requests
    from docarray import DocList
    from jina import Client, Flow

    from executors.schemas import SearchDoc

    rows = read_captions(data.test_file)
    first_caption: dict[str, str] = {}
    for image, caption in rows:
        first_caption.setdefault(image, caption)
    grpc_port, http_port = free_port(), free_port()
    env = {
        "TEXT_TOWER": str(run_dir / "clip-text"),
        "VISION_TOWER": str(run_dir / "clip-vision"),
        "WORKSPACE": str(run_dir / "workspace"),
        "IMAGE_ROOTS": str(data.images_dir),
        "GRPC_PORT": str(grpc_port),
        "HTTP_PORT": str(http_port),
        "HOST": "127.0.0.1",
    }
    with environment(**env):
        flow = Flow.load_config(str(FLOW_YML))
    with flow:
        client = Client(host=f"grpc://127.0.0.1:{grpc_port}")
        docs = DocList[SearchDoc](
            SearchDoc(id=name, uri=str(data.images_dir / name), text=caption)
            for name, caption in first_caption.items()
        )
        indexed = client.post("/index", docs, request_size=32, return_type=DocList[SearchDoc])
        errors = [d for d in indexed if d.error]
        n_ok = len(indexed) - len(errors)
        print(f"indexed {n_ok} held-out images over gRPC ({len(errors)} errors)")
        # Every 5th caption is a different phrasing than the one stored with the image.
        picks = rows[1 :: max(1, len(rows) // queries)][:queries]
        correct = 0
        for image, caption in picks:
            response = requests.post(
                f"http://127.0.0.1:{http_port}/search",
                json={"data": [{"text": caption}], "parameters": {"limit": limit}},
                timeout=60,
            )
            response.raise_for_status()
            matches = response.json()["data"][0]["matches"]
            hit = bool(matches) and matches[0]["id"] == image
            correct += hit
            print(f'\nquery (HTTP): "{caption}"  -> {"right image first" if hit else "miss"}')
            for rank, m in enumerate(matches, 1):
                mark = "*" if m["id"] == image else " "
                print(f"  {rank}. {mark} {m['score']:.3f}  {m['id']}  ({m.get('text')})")
    print(f"\nright image ranked first for {correct}/{len(picks)} queries; Flow shut down")
    return {"queries": len(picks), "top1": correct, "indexed": n_ok}
