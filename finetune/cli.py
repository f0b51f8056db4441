"""`python -m finetune fit|eval|compare`: a thin layer over the Python API.

The `fit` flags are generated from `FitConfig`'s fields (names, types, defaults, choices), so
the CLI and `finetune.fit(...)` always take the same names (`--learning-rate` is
`learning_rate=`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from finetune import atomic
from finetune.artifact import RUNTIMES
from finetune.compare import compare
from finetune.inference import evaluate
from finetune.onnx_export import export_onnx
from finetune.report import to_markdown
from finetune.train import FitConfig, fit

FIT_HELP: dict[str, str] = {
    "model": "open_clip model as NAME[#PRETRAINED]: ViT-B-32#openai, "
    "ViT-B-32-quickgelu#laion400m_e32, ViT-Tiny-8 (random init), ViT-Tiny-8#CHECKPOINT_FILE, "
    "or an earlier run folder. Pretrained tags download once (internet).",
    "train_data": "training pairs: CSV (text,image in either order), open_clip CSV/TSV, "
    "Flickr8k captions.txt, Karpathy JSON or COCO captions JSON",
    "eval_data": "held-out pairs, evaluated (recall@k) before training and after each epoch",
    "output": "run folder to write: config.json, metrics.jsonl, clip-text/, clip-vision/",
    "epochs": "passes over the training data",
    "batch_size": "GLOBAL batch size (split across torchrun processes); the contrastive "
    "loss uses all of it as negatives",
    "learning_rate": "peak learning rate (1e-6 suits pretrained ViT-B; small models from "
    "scratch want ~1e-4 to 1e-3)",
    "loss": "training loss",
    "optimizer": "adam or adamw",
    "weight_decay": "decoupled weight decay with adamw (not on gains, biases, temperature)",
    "schedule": "learning-rate schedule after warmup: constant or cosine (to zero)",
    "warmup_steps": "linear warmup steps",
    "grad_accum_steps": "optimizer step every N micro-batches of batch-size/N (each "
    "micro-batch is its own contrastive batch)",
    "grad_clip_norm": "clip the global gradient norm to this value",
    "precision": "fp32, amp (fp16 autocast + loss scaling, for GPUs) or bf16 (autocast)",
    "device": "auto (cuda if available), cpu or cuda",
    "workers": "DataLoader worker processes (default: min(4, cores-1))",
    "seed": "random seed: same seed, data and settings => same run",
    "augment": "use open_clip's training augmentation (random resized crop)",
    "lock_image": "freeze the image tower (LiT)",
    "lock_image_unlocked_groups": "with --lock-image: leave the last N layer groups trainable",
    "lock_text": "freeze the text tower",
    "lock_text_unlocked_layers": "with --lock-text: leave the last N layers trainable",
    "eval_every": "evaluate every N epochs (and after the last)",
    "recall_k": "k values for recall@k",
    "monitor": "metric that picks the best epoch (saved as the artifact)",
    "early_stopping_patience": "stop after N evaluations without improvement of --monitor",
    "resume": "continue an interrupted run from its folder (its checkpoint.pt)",
    "wise_ft": "WiSE-FT: interpolate the final weights with the starting ones, "
    "theta = (1-a)*start + a*finetuned",
    "max_steps": "stop after this many optimizer steps (quick trials)",
    "format": "data format: auto, csv, openclip-csv, flickr8k, karpathy, coco",
    "image_root": "folder that relative image paths resolve against (default: the data "
    "file's folder)",
    "split": "Karpathy split of --train-data (train includes restval)",
    "eval_split": "Karpathy split of --eval-data (default test)",
    "prompt": 'wrap every caption, e.g. "This is a photo of {}"',
    "csv_img_key": "open_clip CSV: image column (default filepath)",
    "csv_caption_key": "open_clip CSV: caption column (default title)",
    "csv_separator": "open_clip CSV: separator (default tab for .tsv, else comma)",
    "max_bad_fraction": "stop if more than this fraction of rows is unusable (missing or "
    "corrupt image, empty caption)",
    "max_pairs": "use only the first N pairs (quick trials)",
    "save_dtype": "tower weights dtype on disk: float32 or float16 (half the size)",
    "progress": "progress bars",
}

EXAMPLES = """examples:
  # fine-tune OpenAI's ViT-B-32 on your CSV of text,image pairs (defaults: Adam, lr 1e-6,
  # 5 epochs, batch 32, the recipe that took Flickr8k image-recall@5 from 0.532 to 0.865)
  python -m finetune fit --model ViT-B-32#openai --train-data pairs.csv --eval-data test.csv \\
      --output runs/mine
  # the same on 2 processes (CPU: gloo, GPU: nccl)
  torchrun --nproc_per_node 2 -m finetune fit --model ViT-B-32#openai --train-data pairs.csv
  # evaluate any model or run on any supported data
  python -m finetune eval --model runs/mine --data test.csv --recall-k 1 5 10
"""


def _add_fit_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per `FitConfig` field: its name, type, default and choices come from there."""
    defaults, hints, choices = FitConfig(), get_type_hints(FitConfig), FitConfig.choices()
    for f in dataclasses.fields(FitConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = FIT_HELP.get(f.name, "")
        kind = _value_type(hints[f.name])
        if f.name == "progress":
            parser.add_argument(
                "--no-progress", dest="progress", action="store_false", help="no progress bars"
            )
        elif kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif get_origin(hints[f.name]) is tuple:
            parser.add_argument(flag, type=kind, nargs="+", default=list(default), help=help_text)
        else:
            if default not in (None, ""):
                help_text += f" (default: {default})"
            parser.add_argument(
                flag,
                type=kind,
                default=default,
                choices=choices.get(f.name),
                required=f.name == "train_data",
                metavar=None if f.name in choices else f.name.upper(),
                help=help_text,
            )


def _value_type(hint: Any) -> type:
    """The type argparse converts a flag's value to: `int | None` -> int, `tuple[int, ...]`
    -> int, `Literal["a", "b"]` -> str."""
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0])
    args = [a for a in get_args(hint) if a is not type(None) and a is not Ellipsis]
    return _value_type(args[0]) if args else hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        description="Fine-tune open_clip CLIP models on your own image-caption pairs, locally.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = sub.add_parser(
        "fit",
        help="fine-tune a CLIP and write its two towers",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_fit_arguments(fit)

    ev = sub.add_parser("eval", help="retrieval recall@k of a model or run on a data file")
    ev.add_argument("--model", required=True, help="run folder, tower folder or NAME[#PRETRAINED]")
    ev.add_argument("--data", required=True, help="any data file `fit` reads")
    ev.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    ev.add_argument("--format", default="auto", choices=FitConfig.choices()["format"])
    ev.add_argument("--split", default=None, help="Karpathy split (default: all)")
    ev.add_argument("--image-root", default=None)
    ev.add_argument("--prompt", default=None)
    ev.add_argument("--device", default="auto", choices=FitConfig.choices()["device"])
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--output", default=None, help="also write the metrics to this JSON file")

    cmp = sub.add_parser(
        "compare",
        help="zero-shot vs fine-tuned table for models x datasets (the Flickr8k/COCO "
        "experiment of the blog post 'Fine-tuned CLIP vs Zero-Shot CLIP for search')",
        description="For each model and dataset: evaluate zero-shot on the test split, fine-tune "
        "on the train split, evaluate again. Writes report.md, report.json and report.png.",
    )
    cmp.add_argument("--models", nargs="+", required=True, help="NAME[#PRETRAINED] or run folders")
    cmp.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="NAME=PATH: a folder (captions_train.txt+captions_test.txt, dataset_*.json, COCO "
        "annotations/) or a Karpathy JSON; coco uses a 100k-pair train subset",
    )
    cmp.add_argument(
        "--output", default="runs/compare", help="report folder (default: runs/compare)"
    )
    _add_fit_arguments(cmp, exclude=COMPARE_OWN)
    _add_export_parser(sub, ev)
    return parser


def _add_export_parser(sub: Any, ev: argparse.ArgumentParser) -> None:
    """`export` subcommand, and `eval --runtime` to evaluate what it exported."""
    ev.add_argument(
        "--runtime",
        default="torch",
        choices=RUNTIMES,
        help="torch, or the run's exported onnx / onnx-int8 towers (see `export`)",
    )
    export = sub.add_parser(
        "export",
        help="export a run's towers (or one tower folder) to ONNX for the onnx runtimes",
        description="Writes model.onnx (and with --int8 model.int8.onnx, int8 weights) into "
        "each tower folder, beside model.safetensors. Needs pip install -e '.[onnx]'.",
    )
    export.add_argument("source", help="run folder or tower folder (clip-text/, clip-vision/)")
    export.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    export.add_argument("--int8", action="store_true", help="also write the int8-quantised graph")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our progress at INFO; other libraries (open_clip logs every step of model creation) quieter.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("finetune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input is the user's to fix: say what is wrong without a traceback.
        logging.getLogger("finetune").debug("error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_fit(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    run = fit(**{k: v for k, v in vars(args).items() if k in fields})
    print(json.dumps({"output": str(run.output), "best": run.best, "steps": run.steps}, indent=2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    metrics = evaluate(
        args.model,
        args.data,
        recall_k=args.recall_k,
        device=args.device,
        batch_size=args.batch_size,
        format=args.format,
        split=args.split,
        image_root=args.image_root,
        prompt=args.prompt,
        runtime=args.runtime,
    )
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.output, text + "\n")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(FitConfig)} - set(COMPARE_OWN)
    fit_config = FitConfig(train_data="-", **{k: v for k, v in vars(args).items() if k in fields})
    rows = compare(args.models, args.datasets, args.output, fit_config, recall_k=args.recall_k)
    print(to_markdown(rows))
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    written = export_onnx(args.source, int8=args.int8, report=lambda line: print(line, flush=True))
    print(json.dumps([str(p) for p in written], indent=2))
    return 0


COMPARE_OWN = ("model", "train_data", "eval_data", "output", "resume", "split", "eval_split")
COMMANDS = {
    "fit": _run_fit,
    "eval": _run_eval,
    "compare": _run_compare,
    "export": _run_export,
}
