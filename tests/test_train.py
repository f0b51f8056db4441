"""The training loop: learns, resumes, keeps the best, locks towers, interpolates, distributes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune import fit
from finetune.artifact import split_state_dict
from finetune.checkpoint import CHECKPOINT, load_checkpoint
from finetune.models import create_clip
from finetune.train import FitConfig, make_optimizer

COMMON = dict(model="ViT-Tiny-8", batch_size=16, workers=0, progress=False)


def _records(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _tower_state(run_dir, tower):
    return load_file(str(Path(run_dir) / tower / "model.safetensors"))


def test_fit_learns_and_writes_the_artifact(tiny_run, sample_dir):
    out = tiny_run.output
    assert (out / "config.json").is_file()
    assert (out / "clip-text" / "model.safetensors").is_file()
    assert (out / "clip-vision" / "model.safetensors").is_file()
    train = _records(out, "train")
    evals = _records(out, "eval")
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert {"loss", "lr", "samples_per_s", "logit_scale"} <= set(train[0])
    assert evals[0]["epoch"] == 0  # zero-shot evaluation before training
    assert "image_retrieval_recall@5" in evals[-1] and "text_retrieval_recall@5" in evals[-1]
    # it learns: the mean loss of the last epoch is well below the first steps'
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-3:]) / 3
    assert last < 0.9 * first
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "ViT-Tiny-8" and config["fit"]["epochs"] == 2
    # the best epoch is the one saved and reported
    assert tiny_run.best["image_retrieval_recall@5"] == max(
        e["image_retrieval_recall@5"] for e in evals if e["epoch"] > 0
    )


def test_resume_continues_where_it_stopped(sample_dir, tmp_path):
    out = tmp_path / "run"
    first = fit(train_data=str(sample_dir.train_file), output=str(out), epochs=1, **COMMON)
    resumed = fit(train_data=str(sample_dir.train_file), resume=str(out), epochs=2, **COMMON)
    steps = [r["step"] for r in _records(out, "train")]
    assert steps == list(range(1, resumed.steps + 1))
    assert resumed.steps == 2 * first.steps
    assert {r["epoch"] for r in _records(out, "train")} == {1, 2}


def test_a_resumed_run_equals_an_uninterrupted_one(sample_dir, tmp_path):
    """Stopped after epoch 1 and resumed: the same steps, losses, best epoch and weights, and
    the checkpoint's state continues from where the first part's left off."""
    data = dict(train_data=str(sample_dir.train_file), eval_data=str(sample_dir.test_file))
    common = {**COMMON, **data, "learning_rate": 1e-3, "optimizer": "adamw"}
    whole = fit(output=str(tmp_path / "whole"), epochs=2, **common)

    part = fit(output=str(tmp_path / "parts"), epochs=1, **common)
    stopped = _checkpoint_state(part.output)
    assert (stopped.epoch, stopped.step, stopped.best) == (1, part.steps, part.best)
    resumed = fit(resume=str(part.output), epochs=2, **common)

    assert part.train_loss + resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-6)
    steps = [(r["epoch"], r["step"]) for r in _records(whole.output, "train")]
    assert [(r["epoch"], r["step"]) for r in _records(part.output, "train")] == steps
    assert resumed.best == whole.best
    assert _checkpoint_state(resumed.output) == _checkpoint_state(whole.output)
    for tower in ("clip-text", "clip-vision"):
        w1, w2 = _tower_state(whole.output, tower), _tower_state(resumed.output, tower)
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], msg=key)


def _checkpoint_state(run_dir):
    model = create_clip("ViT-Tiny-8").model
    optimizer = make_optimizer(model, FitConfig(optimizer="adamw"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return load_checkpoint(Path(run_dir) / CHECKPOINT, model, optimizer, scaler)


def test_resume_without_checkpoint_is_a_clear_error(sample_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume.*checkpoint.pt"):
        fit(train_data=str(sample_dir.train_file), resume=str(tmp_path), **COMMON)


def test_early_stopping_stops_when_the_metric_does_not_improve(sample_dir, tmp_path):
    run = fit(
        train_data=str(sample_dir.train_file),
        eval_data=str(sample_dir.test_file),
        output=str(tmp_path / "r"),
        epochs=6,
        learning_rate=1e-12,
        early_stopping_patience=1,
        **COMMON,
    )
    epochs_evaluated = [e["epoch"] for e in run.eval_metrics]
    # zero-shot, epoch 1 (the best: nothing changes after it), epoch 2 (no gain: stop)
    assert epochs_evaluated == [0, 1, 2]


def test_wise_ft_zero_gives_back_the_start_and_lock_freezes_a_tower(sample_dir, tmp_path):
    torch.manual_seed(0)
    start = create_clip("ViT-Tiny-8")
    torch.manual_seed(0)
    run = fit(
        train_data=str(sample_dir.train_file),
        output=str(tmp_path / "w"),
        epochs=1,
        learning_rate=1e-3,
        wise_ft=0.0,
        seed=0,
        **COMMON,
    )
    text0, vision0 = split_state_dict(start.model)
    for key, value in _tower_state(run.output, "clip-vision").items():
        torch.testing.assert_close(value, vision0[key])

    locked = fit(
        train_data=str(sample_dir.train_file),
        output=str(tmp_path / "l"),
        epochs=1,
        learning_rate=1e-3,
        lock_image=True,
        seed=0,
        **COMMON,
    )
    vision = _tower_state(locked.output, "clip-vision")
    text = _tower_state(locked.output, "clip-text")
    assert all(torch.equal(vision[k], vision0[k]) for k in vision)
    assert not all(torch.equal(text[k], text0[k]) for k in text)


def test_bf16_and_accumulation_run_on_cpu(sample_dir, tmp_path):
    run = fit(
        train_data=str(sample_dir.train_file),
        output=str(tmp_path / "b"),
        epochs=1,
        precision="bf16",
        grad_accum_steps=2,
        grad_clip_norm=1.0,
        schedule="cosine",
        warmup_steps=2,
        optimizer="adamw",
        weight_decay=0.1,
        **COMMON,
    )
    losses = [r["loss"] for r in _records(run.output, "train")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    lrs = [r["lr"] for r in _records(run.output, "train")]
    assert lrs[0] < lrs[1]  # warmup


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("optimizer", "sgd", "optimizer must be one of"),
        ("epochs", 0, "epochs must be >= 1"),
        ("wise_ft", 1.5, "wise_ft must be in"),
        ("learning_rate", -1.0, "learning_rate must be > 0"),
    ],
)
def test_bad_options_are_clear_errors(sample_dir, option, value, message):
    with pytest.raises(ValueError, match=message):
        fit(train_data=str(sample_dir.train_file), **{**COMMON, option: value})


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(sample_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) == 1 process: same losses and updated weights."""
    args = [
        "-m",
        "finetune",
        "fit",
        "--model",
        "ViT-Tiny-8",
        "--train-data",
        str(sample_dir.train_file),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--learning-rate",
        "1e-3",
        "--optimizer",
        "adamw",
        "--workers",
        "0",
        "--max-steps",
        "3",
        "--no-progress",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    for cmd, out in ((torchrun, "two"), ([sys.executable], "one")):
        subprocess.run([*cmd, *args, "--output", str(tmp_path / out)], check=True, timeout=300)

    one, two = _records(tmp_path / "one", "train"), _records(tmp_path / "two", "train")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    _assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_accumulated_micro_batches_equal_one_big_batch(sample_dir, tmp_path):
    """grad_accum_steps=2 keeps the whole batch as negatives: same losses and weights."""
    common = {**COMMON, "optimizer": "adamw", "learning_rate": 1e-3, "max_steps": 2}
    one = fit(train_data=str(sample_dir.train_file), output=str(tmp_path / "one"), **common)
    two = fit(
        train_data=str(sample_dir.train_file),
        output=str(tmp_path / "two"),
        grad_accum_steps=2,
        **common,
    )
    assert one.train_loss == pytest.approx(two.train_loss, rel=1e-5)
    _assert_same_weights(one.output, two.output)


def _assert_same_weights(run_a, run_b):
    for tower in ("clip-text", "clip-vision"):
        w1, w2 = _tower_state(run_a, tower), _tower_state(run_b, tower)
        for key in w1:
            a, b = w1[key], w2[key]
            if key.endswith("in_proj_bias"):
                # Attention is invariant to the key bias, so its true gradient is 0 and what
                # backprop gives is rounding noise, which Adam scales up to +-lr: compare the
                # query and value parts only.
                width = len(a) // 3
                keep = torch.ones_like(a, dtype=torch.bool)
                keep[width : 2 * width] = False
                a, b = a[keep], b[keep]
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=key)
