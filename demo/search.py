"""The demo's last stage: serve the fine-tuned towers with `flow.yml`, index, search.

Starts the Flow as its own process group on 127.0.0.1 and free ports, indexes the held-out
images over gRPC, sends held-out captions as text queries over HTTP (Jina's `POST /search`
convention), prints the top hits, and shuts the Flow down.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from client.api import SearchClient, images_to_index
from demo import REPO
from demo.served_flow import ServedFlow, flow_env
from imagepairs.pairs import load_pairs


def search_demo(
    run_dir: Path, data: Any, queries: int = 5, limit: int = 3, progress: bool = True
) -> dict[str, Any]:
    items = images_to_index(data.test_file)  # ids: image paths relative to the data folder
    id_of = {item.path: item.id for item in items}
    workspace = run_dir / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)  # a fresh index for each demo run
    env = flow_env(run_dir, workspace, data.images_dir)
    print(f"starting the Flow (gRPC :{env['GRPC_PORT']}, HTTP :{env['HTTP_PORT']}) ...", flush=True)
    with ServedFlow(str(REPO / "flow.yml"), env, run_dir / "flow.log") as flow:
        bar = tqdm(total=len(items), desc="index (gRPC)", unit="img", disable=not progress)
        with SearchClient(flow.grpc) as grpc:
            outcomes = grpc.index(
                items, batch_size=32, on_batch=lambda batch: bar.update(len(batch))
            )
        bar.close()
        failed = [o for o in outcomes if o.error]
        print(f"indexed {len(outcomes) - len(failed)} held-out images ({len(failed)} errors)")
        # Queries are held-out captions other than the one stored as each image's display text.
        pairs = load_pairs(data.test_file, check_images=False).pairs
        stored = {item.path: item.caption for item in items}
        candidates = [p for p in pairs if p.caption != stored.get(p.image)]
        picks = candidates[:: max(1, len(candidates) // queries)][:queries]
        top1 = 0
        with SearchClient(flow.http) as http:
            for pair in picks:
                hits = http.search(text=pair.caption, limit=limit)
                right = id_of[pair.image]
                top1 += bool(hits) and hits[0].id == right
                verdict = "right image first" if hits and hits[0].id == right else "miss"
                print(f'\nquery (HTTP): "{pair.caption}"  -> {verdict}')
                for rank, hit in enumerate(hits, 1):
                    mark = "*" if hit.id == right else " "
                    print(f"  {rank}. {mark} {hit.score:.3f}  {hit.id}  ({hit.text})")
    print(f"\nright image ranked first for {top1}/{len(picks)} queries; the Flow is shut down")
    return {"indexed": len(outcomes) - len(failed), "queries": len(picks), "top1": top1}
