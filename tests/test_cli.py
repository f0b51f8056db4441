"""The CLI is a thin layer: `python -m finetune ...` end to end, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from demo import BASE_MODEL_DIR
from demo.cli import build_parser as demo_parser
from finetune.cli import build_parser, main
from finetune.train import FitConfig


def _run(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args], capture_output=True, text=True, timeout=300, **kw
    )


def test_help_lists_commands_and_fit_flags_match_the_api():
    help_text = build_parser().format_help()
    for command in ("fit", "eval", "compare"):
        assert command in help_text
    fit_help = _run("fit", "--help").stdout
    for flag in (
        "--model",
        "--train-data",
        "--eval-data",
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--output",
        "--wise-ft",
        "--resume",
        "--lock-image",
    ):
        assert flag in fit_help


@pytest.mark.slow
def test_fit_then_eval_from_the_command_line(sample_dir, tmp_path):
    out = tmp_path / "run"
    fit = _run(
        "fit",
        "--model",
        "ViT-Tiny-8",
        "--train-data",
        str(sample_dir.train_file),
        "--output",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-3",
        "--workers",
        "0",
        "--no-progress",
    )
    assert fit.returncode == 0, fit.stderr
    assert (out / "clip-text" / "model.safetensors").is_file()
    metrics_file = tmp_path / "m.json"
    ev = _run(
        "eval",
        "--model",
        str(out),
        "--data",
        str(sample_dir.test_file),
        "--recall-k",
        "1",
        "5",
        "--output",
        str(metrics_file),
    )
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) >= {"image_retrieval_recall@1", "text_retrieval_recall@5"}
    assert 0.0 <= metrics["image_retrieval_recall@5"] <= 1.0


def test_a_newcomer_trains_on_a_csv_of_their_own_pairs(sample_dir, tmp_path):
    """The README's path: a plain text,image CSV -> `fit` -> both tower folders."""
    rows = sample_dir.train_file.read_text().splitlines()[1:]
    lines = ["caption,image"] + [
        f'"{caption}",{sample_dir.images_dir / image}'
        for image, caption in (row.split(",", 1) for row in rows)
    ]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mine"
    code = main(
        ["fit", "--model", str(BASE_MODEL_DIR), "--train-data", str(pairs),
         "--epochs", "1", "--batch-size", "16", "--learning-rate", "3e-4", "--workers", "0",
         "--output", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    for tower in ("clip-text", "clip-vision"):
        assert (out / tower / "model.safetensors").is_file()
        assert (out / tower / "config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == -(-len(rows) // 16)


def test_fit_flags_take_their_types_defaults_and_choices_from_fit_config():
    parser = build_parser()
    args = parser.parse_args(["fit", "--train-data", "p.csv", "--recall-k", "1", "3"])
    config = FitConfig(**{k: v for k, v in vars(args).items() if k in FitConfig.__annotations__})
    assert config.recall_k == [1, 3] and config.optimizer == "adam" and config.epochs == 5
    assert parser.parse_args(["fit", "--train-data", "p", "--wise-ft", "0.5"]).wise_ft == 0.5
    assert parser.parse_args(["fit", "--train-data", "p", "--max-steps", "7"]).max_steps == 7
    for name, allowed in FitConfig.choices().items():
        flag = "--" + name.replace("_", "-")
        assert parser.parse_args(["fit", "--train-data", "p", flag, allowed[-1]])
        with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
            parser.parse_args(["fit", "--train-data", "p", flag, "no-such-choice"])
    assert set(FitConfig.choices()) >= {"optimizer", "precision", "format", "loss", "save_dtype"}
    with pytest.raises(ValueError, match="optimizer must be one of"):
        FitConfig(train_data="p", optimizer="sgd").validate()


def test_the_demo_has_its_own_command_outside_the_product():
    help_text = demo_parser().format_help()
    for command in ("run", "base-model", "sample-data"):
        assert command in help_text


def test_bad_input_exits_2_with_a_message_not_a_traceback(tmp_path, capsys):
    code = main(["fit", "--model", "ViT-Tiny-8", "--train-data", str(tmp_path / "missing.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.csv" in err and "Traceback" not in err
    assert main(["eval", "--model", "ViT-Nope-1", "--data", str(tmp_path / "x.csv")]) == 2


def test_the_package_api_names_stay_functions_whatever_was_imported_first():
    import finetune.inference
    import finetune.train

    for name in ("fit", "get_model", "encode", "evaluate"):
        assert callable(getattr(finetune, name)), name  # no submodule shadows the API name
