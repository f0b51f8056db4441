"""The zero-shot vs fine-tuned table (as in the blog post 'Fine-tuned CLIP vs Zero-Shot CLIP
for search'), as Markdown, JSON and a bar chart.

Pure functions over result rows; they know nothing of models or training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune import atomic

COLUMNS = (
    "model",
    "dataset",
    "imageRecall@5 (zero-shot)",
    "textRecall@5 (zero-shot)",
    "imageRecall@5 (fine-tuned)",
    "textRecall@5 (fine-tuned)",
    "imageRecall@5 improvement",
    "textRecall@5 improvement",
)


def make_row(
    model: str, dataset: str, zero_shot: dict[str, Any], fine_tuned: dict[str, Any]
) -> dict[str, Any]:
    """One table row; the full recall@1/5/10 metrics ride along under `zero_shot`/`fine_tuned`."""
    row: dict[str, Any] = {"model": model, "dataset": dataset}
    for direction, key in (
        ("image", "image_retrieval_recall@5"),
        ("text", "text_retrieval_recall@5"),
    ):
        before, after = zero_shot[key], fine_tuned[key]
        row[f"{direction}Recall@5 (zero-shot)"] = round(before, 4)
        row[f"{direction}Recall@5 (fine-tuned)"] = round(after, 4)
        row[f"{direction}Recall@5 improvement"] = relative_improvement(before, after)
    row["zero_shot"] = zero_shot
    row["fine_tuned"] = fine_tuned
    return row


def relative_improvement(before: float, after: float) -> str:
    if before == 0:
        return "n/a" if after == 0 else "+inf"
    return f"{(after - before) / before:+.1%}"


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Grouped bars: zero-shot vs fine-tuned recall@5, both directions, per model x dataset."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['dataset']}" for r in rows]
    series = [
        ("imageRecall@5 (zero-shot)", "#9ecae1"),
        ("imageRecall@5 (fine-tuned)", "#08519c"),
        ("textRecall@5 (zero-shot)", "#fdae6b"),
        ("textRecall@5 (fine-tuned)", "#a63603"),
    ]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(rows) + 2), 4))
    for i, (column, colour) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(rows))]
        values = [r[column] for r in rows]
        bars = ax.bar(xs, values, width, label=column, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall@5")
    ax.set_title("Zero-shot vs fine-tuned CLIP retrieval")
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def runtime_table(metrics: dict[str, dict[str, float]], ks: Sequence[int] = (1, 5, 10)) -> str:
    """Recall@k both ways per runtime (torch, onnx, onnx-int8), as Markdown."""
    cols = [f"image_retrieval_recall@{k}" for k in ks] + [f"text_retrieval_recall@{k}" for k in ks]
    header = ["runtime", *(f"imageRecall@{k}" for k in ks), *(f"textRecall@{k}" for k in ks)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for runtime, values in metrics.items():
        lines.append("| " + " | ".join([runtime, *(f"{values[c]:.3f}" for c in cols)]) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    sections: Sequence[str] = (),
) -> dict[str, Path]:
    """`report.md` (the table, then `sections`), `report.json` ({"rows": [...], **extra}) and
    `report.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    atomic.write_text(paths["md"], "\n".join([to_markdown(rows), *sections]))
    atomic.write_json(paths["json"], {"rows": list(rows), **(extra or {})})
    plot(rows, paths["png"])
    return paths
