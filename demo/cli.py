"""`python -m demo [run|base-model|sample-data]` (`make demo`, `make base-model`)."""

from __future__ import annotations

import argparse
import logging
import sys

from demo import BASE_MODEL_DIR
from demo.pipeline import build_base_model, run_demo
from demo.sample_data import DOMAINS, generate_sample_data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="The offline demo: zero-shot vs fine-tuned on a generated sample domain, "
        "then a live search through the Flow. Needs no internet.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="the whole demo (the default command)")
    run.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    run.add_argument("--no-search", dest="search", action="store_false", help="skip the Flow")
    run.add_argument("--no-progress", dest="progress", action="store_false")

    base = sub.add_parser("base-model", help="rebuild the committed base model from random init")
    base.add_argument("--output", default=str(BASE_MODEL_DIR), help="default: %(default)s")

    sd = sub.add_parser("sample-data", help="generate a sample domain (Flickr8k layout)")
    sd.add_argument("--domain", choices=DOMAINS, required=True)
    sd.add_argument("--n", type=int, default=1000, help="number of images (5 captions each)")
    sd.add_argument("--out", required=True, help="output folder")
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--test-fraction", type=float, default=0.2)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("finetune").setLevel(logging.INFO)
    try:
        if args.command == "run":
            run_demo(args.output, search=args.search, progress=args.progress)
        elif args.command == "base-model":
            print(build_base_model(args.output))
        else:
            print(
                generate_sample_data(
                    args.domain, args.n, args.out, seed=args.seed, test_fraction=args.test_fraction
                )
            )
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
