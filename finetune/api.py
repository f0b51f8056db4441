"""The Python API beside `fit`: load a model or one tower, embed data, evaluate retrieval."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from finetune.artifact import TEXT_TOWER, VISION_TOWER, load_model
from finetune.data import load_pairs
from finetune.evaluate import DEFAULT_RECALL_K, evaluate_bundle
from finetune.images import has_image, is_image_path, load_image
from finetune.models import CLIPBundle, resolve_device
from finetune.towers import TextTower, VisionTower, load_tower, tower_from_bundle

Model = CLIPBundle | TextTower | VisionTower


def get_model(
    artifact: str | os.PathLike, select_model: str | None = None, device: str = "auto"
) -> Model:
    """A run folder, a tower folder or `NAME[#PRETRAINED]` -> one tower, or the full CLIP.

    `select_model='clip-text'` or `'clip-vision'` builds only that tower (from a run or tower
    folder, the other tower's weights are never read). Without it, the full CLIP is returned.
    """
    device = resolve_device(device)
    if select_model is not None:
        return load_tower(artifact, select_model, device=device)
    bundle = load_model(artifact, device=device)
    bundle.model.eval()
    return bundle


def encode(model: Model, data: Any, batch_size: int = 64) -> Any:
    """Embed `data` with `model`; embeddings are L2-normalised float32.

    `data` is a docarray `DocList` (docs with `.text` go to the text tower, docs with
    `.uri`/`.tensor`/`.blob` images to the vision tower; each doc's `.embedding` is set and the
    DocList returned), a list of strings, or a list of images / image paths (an array of shape
    (n, dim) is returned).
    """
    if _is_doclist(data):
        return _encode_docs(model, data, batch_size)
    items = list(data)
    texts = items and all(isinstance(x, str) and not _looks_like_image(x) for x in items)
    kind = TEXT_TOWER if texts else VISION_TOWER
    return _tower(model, kind).encode(items, batch_size=batch_size)


def evaluate(
    model: str | os.PathLike | CLIPBundle,
    data: str | os.PathLike,
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
    **data_options: Any,
) -> dict[str, float]:
    """Retrieval recall@k of a model (run folder or `NAME[#PRETRAINED]`) on a data file."""
    bundle = model if isinstance(model, CLIPBundle) else get_model(model, device=device)
    pairs = load_pairs(data, **data_options)
    return evaluate_bundle(bundle, pairs, recall_k, batch_size=batch_size, progress=progress)


def _tower(model: Model, kind: str) -> TextTower | VisionTower:
    if isinstance(model, CLIPBundle):
        return tower_from_bundle(model, kind)
    if model.kind != kind:
        raise ValueError(f"this is the {model.kind} tower; these inputs need the {kind} tower")
    return model


def _is_doclist(data: Any) -> bool:
    # by its shape, so that the trainer does not import docarray: a DocList knows its doc type
    return hasattr(data, "doc_type") and hasattr(data, "__iter__")


def _looks_like_image(value: str) -> bool:
    return is_image_path(value) and os.path.exists(value)


def _encode_docs(model: Model, docs: Any, batch_size: int) -> Any:
    # A doc with an image is embedded as an image (its text is a stored caption), as in the Flow.
    image_docs = [d for d in docs if has_image(d)]
    text_docs = [d for d in docs if not has_image(d) and getattr(d, "text", None)]
    for kind, subset, inputs in (
        (TEXT_TOWER, text_docs, lambda: [d.text for d in text_docs]),
        (VISION_TOWER, image_docs, lambda: [_doc_image(d) for d in image_docs]),
    ):
        if subset:
            for doc, emb in zip(
                subset, _tower(model, kind).encode(inputs(), batch_size), strict=True
            ):
                doc.embedding = emb
    return docs


def _doc_image(doc: Any) -> Image.Image | str | bytes | None:
    tensor = getattr(doc, "tensor", None)
    if tensor is not None:
        return Image.fromarray(np.asarray(tensor, dtype=np.uint8))
    blob = getattr(doc, "blob", None)
    if blob:
        return load_image(blob)
    return getattr(doc, "uri", None)
