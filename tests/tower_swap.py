"""A Flow restarted on its index's workspace with other towers of the same dimension (issue 18,
item 2): what `/health`, `/status`, a search, an image search and a new document get.

It indexes images and captions with the project's base model, restarts the Flow on the same
workspace with towers whose every weight is nudged (same shapes and dimension: what a second
fine-tune gives), and reports what each request answered; then restarts it once more with the
new text tower named in COMPATIBLE_TOWERS. Run as a script, it does so on flow.yml and
flow.scaled.yml:

    PYTHONPATH=. .venv/bin/python tests/tower_swap.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from helpers import png

from client.api import ClientError, SearchClient
from demo import BASE_MODEL_DIR
from demo.served_flow import ServedFlow, flow_env
from finetune.artifact import FINGERPRINT, load_model, read_tower_config, save_towers
from finetune.tower_ids import TEXT_TOWER, VISION_TOWER, tower_id

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 30)}


def other_towers(folder: Path) -> Path:
    """The base model with every weight nudged, saved as a run's two towers."""
    bundle = load_model(BASE_MODEL_DIR)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_towers(bundle, folder)
    return folder


def answers(served: ServedFlow) -> list[str]:
    """What /health, /status, a text search, an image search and /index answer."""
    lines = []
    with SearchClient(served.grpc) as client:
        health = client.health()
        lines.append(f"  /health: healthy={health.healthy}; {health.error or ''}".rstrip("; "))
        lines.append(f"  /status towers: {client.status().get('towers')}")
        for what, query in (("text", {"text": "red"}), ("image", {"image": png(COLOURS["red"])})):
            try:
                hits = client.search(**query, limit=1)
                lines.append(f"  {what} search: {[(h.id, round(h.score, 3)) for h in hits]}")
            except ClientError as e:
                lines.append(f"  {what} search: ClientError: {str(e)[:300]}")
        [indexed] = client.post("/index", [{"id": "late", "blob": png((200, 200, 30))}])
        lines.append(f"  /index of a new image: error={str(indexed.get('error'))[:300]}")
    return lines


def run(yml: str, tmp: Path, towers: Path) -> list[str]:
    workspace = tmp / "ws"
    env = flow_env(BASE_MODEL_DIR, workspace, tmp, torch_threads=1)
    lines = [f"{yml}:"]
    with ServedFlow(yml, env, tmp / "flow.log") as served, SearchClient(served.grpc) as client:
        docs = [{"id": name, "blob": png(rgb), "text": name} for name, rgb in COLOURS.items()]
        errors = [d.get("error") for d in client.post("/index", docs)]
        lines.append(f"  indexed with the base model's towers: errors {errors}")
        lines += answers(served)
    swapped = {**env, "TEXT_TOWER": str(towers / TEXT_TOWER)}
    swapped["VISION_TOWER"] = str(towers / VISION_TOWER)
    lines.append("  restarted on the same workspace with the nudged towers:")
    with ServedFlow(yml, swapped, tmp / "flow2.log") as served:
        lines += answers(served)
    text_id = tower_id(TEXT_TOWER, read_tower_config(towers / TEXT_TOWER, TEXT_TOWER)[FINGERPRINT])
    accepted = {**env, "TEXT_TOWER": str(towers / TEXT_TOWER), "COMPATIBLE_TOWERS": text_id}
    lines.append(f"  restarted with only the text tower swapped, COMPATIBLE_TOWERS={text_id}:")
    with ServedFlow(yml, accepted, tmp / "flow3.log") as served:
        lines += answers(served)
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        towers = other_towers(Path(tmp, "other"))
        for yml in ("flow.yml", "flow.scaled.yml"):
            folder = Path(tmp, yml)
            folder.mkdir()
            print("\n".join(run(yml, folder, towers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
