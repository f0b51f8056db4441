"""ONNX export of the towers and the onnx / onnx-int8 runtimes: same embeddings as torch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import finetune
from demo import BASE_MODEL_DIR
from finetune.artifact import ONNX_FILE, ONNX_INT8_FILE
from finetune.cli import main
from finetune.evaluation import evaluate_towers
from finetune.inference import evaluate
from finetune.onnx_export import export_onnx
from finetune.towers import load_tower
from imagepairs.pairs import load_pairs

TEXTS = [
    "a dog",
    "a red circle on the left of a small blue square in a green field",
    " ".join(["word"] * 100),  # longer than the context: truncated, full length
]
MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.99}


@pytest.fixture(scope="module")
def base_export(tmp_path_factory):
    """The committed base model, exported with int8 (into a copy: the assets stay as they are)."""
    run = tmp_path_factory.mktemp("onnx") / "base-model"
    shutil.copytree(BASE_MODEL_DIR, run)
    written = export_onnx(run, int8=True)
    return run, written


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    """The run fine-tuned by the `tiny_run` fixture, exported via the CLI."""
    run = tmp_path_factory.mktemp("onnx") / "tiny"
    shutil.copytree(tiny_run.output, run)
    assert main(["export", str(run), "--onnx", "--int8"]) == 0
    return run


def _images(sample_dir, n=6):
    return [str(p) for p in sorted(sample_dir.images_dir.iterdir())[:n]]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def test_export_writes_both_graphs_into_each_tower_folder(base_export):
    run, written = base_export
    expected = [
        run / tower / name
        for tower in ("clip-text", "clip-vision")
        for name in (ONNX_FILE, ONNX_INT8_FILE)
    ]
    assert written == expected
    for tower in ("clip-text", "clip-vision"):
        files = {p.name for p in (run / tower).iterdir()}
        # beside the torch weights, and no temporary file left behind
        assert files == {"config.json", "model.safetensors", ONNX_FILE, ONNX_INT8_FILE}
    assert (run / "clip-text" / ONNX_INT8_FILE).stat().st_size < (
        run / "clip-text" / ONNX_FILE
    ).stat().st_size


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
@pytest.mark.parametrize("which", ["base", "tiny"])
def test_onnx_towers_give_the_torch_embeddings(
    runtime, which, base_export, tiny_export, sample_dir
):
    run = base_export[0] if which == "base" else tiny_export
    images = _images(sample_dir)
    for tower, items in (("clip-text", TEXTS), ("clip-vision", images)):
        torch_tower = load_tower(run, tower)
        reference = torch_tower.encode(items)
        onnx_tower = finetune.get_model(run, select_model=tower, device="cpu", runtime=runtime)
        assert onnx_tower.kind == tower and onnx_tower.embed_dim == reference.shape[1]
        assert onnx_tower.config["tower"] == tower
        # one tower's graphs embed into its space: the index takes them as that tower
        assert onnx_tower.config["fingerprint"] == torch_tower.config["fingerprint"]
        out = finetune.encode(onnx_tower, items, batch_size=4)  # two batches of unequal size
        assert out.dtype == np.float32 and out.shape == reference.shape
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
        assert _min_cosine(out, reference) >= MIN_COSINE[runtime], (tower, runtime)


def test_the_text_graph_runs_at_the_length_it_is_given(base_export):
    run, _ = base_export
    text = load_tower(run, "clip-text", runtime="onnx")
    assert text.context_length == 32 and text.trims
    batch, length = text.session.get_inputs()[0].shape
    assert isinstance(batch, str) and isinstance(length, str)  # dynamic axes
    reference = load_tower(run, "clip-text").encode(TEXTS)
    # start + 2 words + end; the longer caption's length; an over-long one: the whole context
    for texts, expected_length in ((["a dog"], 4), (TEXTS[:2], 17), (TEXTS, 32)):
        fed = text._feed(text.prepare(texts))
        assert fed.shape == (len(texts), expected_length)
        got = text.session.run(None, {"tokens": fed})[0]
        np.testing.assert_allclose(got, reference[: len(texts)], atol=1e-5)


def test_sessions_use_torch_s_thread_setting_and_the_cpu(base_export):
    run, _ = base_export
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        tower = load_tower(run, "clip-vision", runtime="onnx-int8")
    finally:
        torch.set_num_threads(threads)
    assert tower.session.get_session_options().intra_op_num_threads == 1
    assert tower.session.get_providers() == ["CPUExecutionProvider"]


def test_missing_onnx_files_and_bad_runtimes_are_clear_errors(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m finetune export .* --onnx --int8"):
        load_tower(tiny_run.output, "clip-text", runtime="onnx-int8")
    with pytest.raises(FileNotFoundError, match="needs a run or tower folder exported"):
        load_tower("ViT-Tiny-8", "clip-text", runtime="onnx")
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_tower(tiny_run.output, "clip-text", runtime="tensorrt")
    with pytest.raises(ValueError, match="one tower at a time"):
        finetune.get_model(tiny_run.output, runtime="onnx")
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        export_onnx(tmp_path)


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(BASE_MODEL_DIR, run)

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(run / "clip-vision")
    assert sorted(p.name for p in (run / "clip-vision").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_eval_per_runtime(tiny_export, sample_dir, capsys):
    data = str(sample_dir.test_file)
    torch_metrics = evaluate(tiny_export, data, device="cpu", progress=False)
    # the two-tower path, given torch towers, is the full model's evaluation
    pairs = load_pairs(data)
    towers = [load_tower(tiny_export, t) for t in ("clip-text", "clip-vision")]
    assert evaluate_towers(*towers, pairs, batch_size=7) == pytest.approx(torch_metrics, abs=1e-6)
    for runtime in ("onnx", "onnx-int8"):
        metrics = evaluate(tiny_export, data, device="cpu", progress=False, runtime=runtime)
        assert metrics.keys() == torch_metrics.keys()
        assert metrics["n_texts"] == torch_metrics["n_texts"]
        # a near-tie may swap two neighbours in a ranking: one query of ~25 changes by 0.04
        tolerance = 0.05 if runtime == "onnx" else 0.1
        for key, value in torch_metrics.items():
            assert metrics[key] == pytest.approx(value, abs=tolerance), (runtime, key)
    code = main(
        [
            "eval",
            "--model",
            str(tiny_export),
            "--data",
            data,
            "--runtime",
            "onnx",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert '"image_retrieval_recall@5"' in capsys.readouterr().out
