"""Zero-shot vs fine-tuned for models x datasets: the Flickr8k/COCO experiment of the blog post
'Fine-tuned CLIP vs Zero-Shot CLIP for search', as one command.

    python -m finetune compare --models ViT-B-32#openai --datasets flickr8k=~/data/flickr8k

runs, for each pair, evaluate (zero-shot) -> fit on the train split -> evaluate (fine-tuned),
and writes the table, JSON and chart with `finetune.report`. The test split is never used to
pick epochs or settings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from finetune import atomic
from finetune.artifact import load_model
from finetune.evaluation import evaluate_bundle
from finetune.models import resolve_device
from finetune.report import make_row, write_report
from finetune.train import FitConfig, fit
from imagepairs.pairs import detect_format, load_pairs

log = logging.getLogger("finetune")

# Per-dataset defaults of that experiment (configuration as data).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "coco": {"max_train_pairs": 100_000},
}
# Where the usual downloads keep their images, relative to the dataset folder.
IMAGE_DIRS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", ".")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    train: str
    test: str
    train_split: str | None = None
    test_split: str | None = None
    image_root: str | None = None
    max_train_pairs: int | None = None


def resolve_dataset(arg: str, work_dir: str | os.PathLike = "runs/compare") -> DatasetSpec:
    """`NAME=PATH` -> train/test files. PATH is a folder or a Karpathy split JSON.

    Folders may hold `captions_train.txt` + `captions_test.txt` (the sample-data layout),
    `train.csv` + `test.csv`, `annotations/captions_{train,val}2014.json` (COCO, val is the
    test side), `dataset_*.json` (Karpathy), or only Kaggle's Flickr8k `captions.txt`, which is
    split by image into `work_dir/splits/NAME/` (1000 test images, as Karpathy's split has).
    """
    name, sep, path_str = arg.partition("=")
    if not sep or not name or not path_str:
        raise ValueError(f"dataset {arg!r} must be written NAME=PATH, e.g. flickr8k=data/flickr8k")
    path = Path(path_str).expanduser()
    preset = DATASET_PRESETS.get(name.lower(), {})
    if path.is_file():
        if detect_format(path) != "karpathy":
            raise ValueError(
                f"{path}: a dataset file must be a Karpathy split JSON; else pass a folder"
            )
        return DatasetSpec(
            name, str(path), str(path), "train", "test", _image_root(path.parent), **preset
        )
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {name}: {path} does not exist")
    layouts = (
        ("captions_train.txt", "captions_test.txt", None, None),
        ("train.csv", "test.csv", None, None),
        ("annotations/captions_train2014.json", "annotations/captions_val2014.json", None, None),
    )
    for train, test, train_split, test_split in layouts:
        if (path / train).is_file() and (path / test).is_file():
            image_root = None if train.endswith(".txt") or train.endswith(".csv") else str(path)
            return DatasetSpec(
                name,
                str(path / train),
                str(path / test),
                train_split,
                test_split,
                image_root,
                **preset,
            )
    karpathy = sorted(path.glob("dataset_*.json"))
    if karpathy:
        return DatasetSpec(
            name, str(karpathy[0]), str(karpathy[0]), "train", "test", _image_root(path), **preset
        )
    if (path / "captions.txt").is_file():
        train, test = split_by_image(path / "captions.txt", Path(work_dir) / "splits" / name)
        return DatasetSpec(name, str(train), str(test), image_root=_image_root(path), **preset)
    raise ValueError(
        f"dataset {name}: no known layout in {path} (looked for captions_train.txt + "
        "captions_test.txt, train.csv + test.csv, annotations/captions_*2014.json, "
        "dataset_*.json, captions.txt)"
    )


def split_by_image(
    captions: Path, out_dir: Path, test_images: int = 1000, test_fraction: float = 0.2
) -> tuple[Path, Path]:
    """Split a Flickr8k `captions.txt` by image: the same split on every machine.

    Images are ordered by a hash of their name; the first min(test_images, test_fraction of
    all) go to test. Writes `captions_train.txt` and `captions_test.txt` (same format).
    """
    lines = captions.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    images = sorted({row.split(",", 1)[0] for row in rows}, key=_stable_hash)
    n_test = min(test_images, max(1, int(len(images) * test_fraction)))
    test_set = set(images[:n_test])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "captions_train.txt", out_dir / "captions_test.txt"
    for path, keep in zip(paths, (False, True), strict=True):
        chosen = [row for row in rows if (row.split(",", 1)[0] in test_set) == keep]
        atomic.write_text(path, "\n".join([header, *chosen]) + "\n")
    return paths


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _image_root(folder: Path) -> str:
    for sub in IMAGE_DIRS:
        if (folder / sub).is_dir() and any((folder / sub).iterdir()):
            return str((folder / sub).resolve())
    return str(folder)


def compare_one(
    model: str,
    dataset: DatasetSpec,
    fit_config: FitConfig,
    run_dir: str | os.PathLike,
    recall_k: Sequence[int] = (1, 5, 10),
    label: str | None = None,
) -> dict[str, Any]:
    """Zero-shot eval, fine-tune on the train side, eval again: one row of the table."""
    data_options = {
        "image_root": dataset.image_root,
        "max_bad_fraction": fit_config.max_bad_fraction,
    }
    test = load_pairs(dataset.test, split=dataset.test_split, **data_options)

    def score(model_spec: str) -> dict[str, Any]:
        bundle = load_model(model_spec, device=resolve_device(fit_config.device))
        return evaluate_bundle(bundle, test, recall_k, progress=fit_config.progress)

    log.info(
        "%s on %s: zero-shot evaluation on %d test captions", model, dataset.name, len(test.pairs)
    )
    zero_shot = score(model)
    cfg = replace(
        fit_config,
        model=model,
        train_data=dataset.train,
        split=dataset.train_split,
        image_root=dataset.image_root,
        eval_data=None,
        output=os.fspath(run_dir),
        max_pairs=dataset.max_train_pairs or fit_config.max_pairs,
    )
    run = fit(cfg)
    fine_tuned = score(os.fspath(run.output))
    return make_row(label or model, dataset.name, zero_shot, fine_tuned)


def compare(
    models: Sequence[str],
    datasets: Sequence[str],
    output: str | os.PathLike,
    fit_config: FitConfig | None = None,
    recall_k: Sequence[int] = (1, 5, 10),
) -> list[dict[str, Any]]:
    """Every model x dataset; writes report.md/json/png to `output`, runs under output/runs/."""
    fit_config = fit_config or FitConfig(train_data="-")
    specs = [resolve_dataset(d, output) for d in datasets]
    rows = []
    for model in models:
        for spec in specs:
            run_dir = Path(output) / "runs" / f"{_slug(model)}-{_slug(spec.name)}"
            rows.append(compare_one(model, spec, fit_config, run_dir, recall_k))
            write_report(rows, output)  # after each row, so a long experiment shows progress
    return rows


def _slug(text: str) -> str:
    return re.sub(
        r"[^A-Za-z0-9._-]+", "_", os.path.basename(text.rstrip("/")) if os.sep in text else text
    )
