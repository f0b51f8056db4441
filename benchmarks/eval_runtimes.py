"""Retrieval quality per runtime: recall@1/5/10 both ways with torch, onnx and onnx-int8 towers.

    .venv/bin/python -m finetune demo --output runs/demo --no-search    # the demo run + its data
    .venv/bin/python benchmarks/eval_runtimes.py                        # runs/demo, its test split
    .venv/bin/python benchmarks/eval_runtimes.py --run RUN --data TEST_FILE

The run's towers are exported first when their ONNX files are missing (the same as `python -m
finetune export RUN --onnx --int8`); then each runtime is evaluated on the same data (the same
as `python -m finetune eval --model RUN --data TEST_FILE --runtime R`) and the table shows every
recall and its difference to torch. Quantisation changes the ranking only where two scores are
nearly tied, so on a small test set the differences move in steps of one query.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from results import machine, save_json  # noqa: E402

RUNTIMES = ("torch", "onnx", "onnx-int8")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="run folder (default: the demo's)")
    p.add_argument("--data", default=None, help="default: RUN/data/captions_test.txt")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default="runs/bench/eval_runtimes.json")
    args = p.parse_args(argv)

    from finetune.api import evaluate
    from finetune.onnx_export import ONNX_FILE, ONNX_INT8_FILE, export_onnx

    run = Path(args.run)
    data = args.data or str(run / "data" / "captions_test.txt")
    towers = [run / "clip-text", run / "clip-vision"]
    if not all((t / f).is_file() for t in towers for f in (ONNX_FILE, ONNX_INT8_FILE)):
        export_onnx(run, int8=True, report=print)

    results = {}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        metrics = evaluate(
            run,
            data,
            recall_k=args.recall_k,
            device="cpu",
            batch_size=args.batch_size,
            progress=False,
            runtime=runtime,
        )
        metrics["seconds"] = time.perf_counter() - start
        results[runtime] = metrics

    keys = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in args.recall_k]
    print(
        f"\nrecall per runtime, {run} on {data} ({results['torch']['n_images']} images, "
        f"{results['torch']['n_texts']} captions)\n"
    )
    print("| metric | " + " | ".join(RUNTIMES) + " | onnx - torch | onnx-int8 - torch |")
    print("|---|" + "---:|" * (len(RUNTIMES) + 2))
    for key in keys:
        values = [results[r][key] for r in RUNTIMES]
        deltas = [results[r][key] - results["torch"][key] for r in ("onnx", "onnx-int8")]
        print(
            f"| {key} | "
            + " | ".join(f"{v:.4f}" for v in values)
            + " | "
            + " | ".join(f"{d:+.4f}" for d in deltas)
            + " |"
        )
    seconds = " | ".join(f"{results[r]['seconds']:.1f}" for r in RUNTIMES)
    print(f"| eval seconds | {seconds} | | |")
    print(f"\ncommand: {shlex.join(['.venv/bin/python', 'benchmarks/eval_runtimes.py', *argv])}")
    print(f"CLI: python -m finetune export {run} --onnx --int8")
    for runtime in RUNTIMES:
        print(f"     python -m finetune eval --model {run} --data {data} --runtime {runtime}")
    result = {"config": {**vars(args), "data": data, **machine()}, "runtimes": results}
    save_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
