"""`compare` on tiny data: the zero-shot vs fine-tuned table, JSON and chart, from real runs."""

from __future__ import annotations

import json

import pytest

from finetune.compare import compare, resolve_dataset
from finetune.report import (
    COLUMNS,
    make_row,
    relative_improvement,
    runtime_table,
    to_markdown,
    write_report,
)
from finetune.train import FitConfig


def test_relative_improvement_and_row_shape():
    zs = {"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.4}
    ft = {"image_retrieval_recall@5": 0.8, "text_retrieval_recall@5": 0.4}
    row = make_row("M", "D", zs, ft)
    assert row["imageRecall@5 improvement"] == "+60.0%"
    assert row["textRecall@5 improvement"] == "+0.0%"
    assert relative_improvement(0.0, 0.0) == "n/a"
    table = to_markdown([row])
    assert table.splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"
    assert "| M | D | 0.500 | 0.400 | 0.800 | 0.400 | +60.0% | +0.0% |" in table


def test_dataset_layouts(sample_dir, tmp_path):
    spec = resolve_dataset(f"sample={sample_dir.root}")
    assert spec.train.endswith("captions_train.txt") and spec.test.endswith("captions_test.txt")
    assert resolve_dataset(f"coco={sample_dir.root}").max_train_pairs == 100_000
    with pytest.raises(ValueError, match="NAME=PATH"):
        resolve_dataset("just-a-path")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset(f"x={tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="no known layout"):
        resolve_dataset(f"x={tmp_path}")


def test_a_kaggle_flickr8k_folder_is_split_by_image(sample_dir, tmp_path):
    """Only captions.txt + images/: split by image, the same way every time."""
    from imagepairs.pairs import load_pairs

    kaggle = tmp_path / "flickr8k"
    kaggle.mkdir()
    (kaggle / "captions.txt").write_text(sample_dir.captions_file.read_text())
    (kaggle / "Images").symlink_to(sample_dir.images_dir)
    spec = resolve_dataset(f"flickr8k={kaggle}", tmp_path / "a")
    again = resolve_dataset(f"flickr8k={kaggle}", tmp_path / "b")
    train, test = (
        load_pairs(spec.train, image_root=spec.image_root),
        load_pairs(spec.test, image_root=spec.image_root),
    )
    assert not set(train.images()) & set(test.images())
    assert len(train.pairs) + len(test.pairs) == 5 * 24
    assert len(test.images()) == int(24 * 0.2)
    assert open(spec.test).read() == open(again.test).read()


@pytest.mark.slow
def test_compare_writes_the_seed_table(sample_dir, tmp_path):
    cfg = FitConfig(
        train_data="-",
        epochs=2,
        batch_size=16,
        learning_rate=1e-3,
        optimizer="adamw",
        workers=0,
        progress=False,
    )
    rows = compare(["ViT-Tiny-8"], [f"sample={sample_dir.root}"], tmp_path, cfg, recall_k=(1, 5))
    assert len(rows) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    row = report["rows"][0]
    assert set(COLUMNS) <= set(row)
    assert row["zero_shot"]["image_retrieval_recall@1"] <= 1.0
    assert row["imageRecall@5 (fine-tuned)"] == round(
        row["fine_tuned"]["image_retrieval_recall@5"], 4
    )
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "| ViT-Tiny-8 | sample |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "runs" / "ViT-Tiny-8-sample" / "clip-vision" / "model.safetensors").is_file()


def test_the_runtime_table_and_report_sections(tmp_path):
    metrics = {
        name: {
            f"{way}_retrieval_recall@{k}": value for way in ("image", "text") for k in (1, 5, 10)
        }
        for name, value in (("torch", 0.5), ("onnx-int8", 0.4871))
    }
    table = runtime_table(metrics)
    assert table.splitlines()[0].startswith("| runtime | imageRecall@1 |")
    assert "| onnx-int8 | 0.487 | 0.487 | 0.487 | 0.487 | 0.487 | 0.487 |" in table
    row = make_row("m", "d", metrics["torch"], metrics["torch"])
    paths = write_report([row], tmp_path, extra={"runtimes": metrics}, sections=[table])
    assert paths["md"].read_text().endswith(table)
    assert json.loads(paths["json"].read_text())["runtimes"] == metrics
