"""The offline demo: zero-shot vs fine-tuned on the project's own sample domain, then search.

The recipes below are the whole configuration of `make base-model` and `make demo` (data, not
code paths). The base model plays the role ViT-B-32#openai plays on real photos: pretrained (from
random init, on the broad `generic` domain) and then fine-tuned on the shifted `target` domain.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from demo import BASE_MODEL_DIR
from demo.sample_data import generate_sample_data
from demo.search import search_demo
from finetune.artifact import RUN_CONFIG, RUNTIMES, TOWER_NAMES
from finetune.atomic import read_json, write_json
from finetune.compare import DatasetSpec, compare_one
from finetune.inference import evaluate
from finetune.onnx_export import export_onnx
from finetune.report import runtime_table, to_markdown, write_report
from finetune.train import CHECKPOINT, FitConfig, fit

log = logging.getLogger("finetune")

BASE_MODEL_RECIPE: dict[str, Any] = {
    "data": {"domain": "generic", "n": 3000, "seed": 0},
    "fit": {
        "model": "ViT-Tiny-8",
        "epochs": 6,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "schedule": "cosine",
        "warmup_steps": 50,
        "save_dtype": "float16",  # keeps the committed checkpoint small
        "seed": 0,
    },
}

DEMO_RECIPE: dict[str, Any] = {
    "data": {"domain": "target", "n": 600, "seed": 1, "test_fraction": 0.25},
    "fit": {
        "epochs": 5,
        "batch_size": 64,
        "learning_rate": 3e-4,
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "schedule": "cosine",
        "warmup_steps": 20,
        "seed": 0,
    },
    "search": {"queries": 5, "limit": 3},
}


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"   ({timings[name]:.1f} s)", flush=True)


def build_base_model(
    output: str | Path = BASE_MODEL_DIR, workdir: str | Path = "runs/base-model"
) -> Path:
    """Train the project's base model from random init on the generic domain (`make base-model`)."""
    workdir, output = Path(workdir), Path(output)
    data = generate_sample_data(out_dir=workdir / "data", **BASE_MODEL_RECIPE["data"])
    run = fit(
        FitConfig(
            train_data=str(data.train_file), output=str(workdir / "run"), **BASE_MODEL_RECIPE["fit"]
        )
    )
    output.mkdir(parents=True, exist_ok=True)
    for tower in TOWER_NAMES:
        shutil.copytree(run.output / tower, output / tower, dirs_exist_ok=True)
    config = read_json(run.output / RUN_CONFIG)
    config["recipe"] = BASE_MODEL_RECIPE
    config["rebuild"] = "make base-model"
    write_json(output / RUN_CONFIG, config)
    return output


def run_demo(
    output: str | Path = "runs/demo",
    base_model: str | Path = BASE_MODEL_DIR,
    search: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Make target data, zero-shot eval, fine-tune, eval, report; then serve and search."""
    output = Path(output)
    if not (Path(base_model) / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"base model {base_model} not found: run `make base-model` first")
    timings: dict[str, float] = {}
    with stage("1/5 make the target-domain sample data", timings):
        data = generate_sample_data(
            out_dir=output / "data", progress=progress, **DEMO_RECIPE["data"]
        )
    dataset = DatasetSpec("sample-target", str(data.train_file), str(data.test_file))
    fit_config = FitConfig(train_data="-", progress=progress, **DEMO_RECIPE["fit"])
    with stage("2/5 zero-shot eval, fine-tune, eval (base model -> target domain)", timings):
        row = compare_one(str(base_model), dataset, fit_config, output, label="ViT-Tiny-8 (base)")
    (output / CHECKPOINT).unlink(missing_ok=True)  # optimizer state is not part of the artifact
    with stage("3/5 export the towers to ONNX (fp32, int8) and evaluate each runtime", timings):
        export_onnx(output, int8=True, report=lambda line: print(f"   {line}", flush=True))
        runtimes = {
            runtime: evaluate(output, data.test_file, runtime=runtime, progress=False)
            for runtime in RUNTIMES
        }
        section = "Recall on the test split per serving runtime:\n\n" + runtime_table(runtimes)
        print(section)
    with stage("4/5 report", timings):
        extra = {"stage_seconds": timings, "runtimes": runtimes}
        paths = write_report([row], output, extra=extra, sections=[section])
        print(to_markdown([row]))
        print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    if search:
        with stage("5/5 serve the towers and search", timings):
            search_result = search_demo(output, data, progress=progress, **DEMO_RECIPE["search"])
    else:
        search_result = None
    extra = {"stage_seconds": timings, "runtimes": runtimes, "search": search_result}
    write_report([row], output, extra=extra, sections=[section])
    print("\nstage wall times (s):", json.dumps(timings))
    return {"row": row, **extra}
