"""The Python API beside `fit`: load a model or one tower, embed data, evaluate retrieval."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from finetune.artifact import TEXT_TOWER, VISION_TOWER, load_model
from finetune.evaluation import DEFAULT_RECALL_K, evaluate_bundle, evaluate_towers
from finetune.models import CLIPBundle, resolve_device
from finetune.towers import TextTower, VisionTower, load_tower, tower_from_bundle
from imagepairs.images import has_image, is_image_path, load_image
from imagepairs.pairs import load_pairs

Model = CLIPBundle | TextTower | VisionTower


def get_model(
    artifact: str | os.PathLike,
    select_model: str | None = None,
    device: str = "auto",
    runtime: str = "torch",
) -> Model:
    """A run folder, a tower folder or `NAME[#PRETRAINED]` -> one tower, or the full CLIP.

    `select_model='clip-text'` or `'clip-vision'` builds only that tower (from a run or tower
    folder, the other tower's weights are never read). Without it, the full CLIP is returned.
    `runtime='onnx'` or `'onnx-int8'` (with `select_model`) loads the tower's exported ONNX
    graph (`python -m finetune export RUN --onnx [--int8]`) on ONNX Runtime.
    """
    device = resolve_device(device)
    if select_model is not None:
        return load_tower(artifact, select_model, device=device, runtime=runtime)
    if runtime != "torch":
        raise ValueError(
            f"runtime {runtime!r} serves one tower at a time: pass select_model='clip-text' or "
            "'clip-vision'"
        )
    bundle = load_model(artifact, device=device)
    bundle.model.eval()
    return bundle


def encode(
    model: Model | str | os.PathLike, data: Any, batch_size: int = 64, runtime: str | None = None
) -> Any:
    """Embed `data` with `model`; embeddings are L2-normalised float32.

    `model` is what `get_model` returns, or a run / tower folder, which is then loaded as the
    tower the data need, on `runtime` ('torch' by default, 'onnx', 'onnx-int8'); a loaded
    tower runs on its own runtime (a different `runtime` given is an error).

    `data` is a docarray `DocList` (docs with `.text` go to the text tower, docs with
    `.uri`/`.tensor`/`.blob` images to the vision tower; each doc's `.embedding` is set and the
    DocList returned), a list of strings, or a list of images / image paths (an array of shape
    (n, dim) is returned).
    """
    if _is_doclist(data):
        return _encode_docs(model, data, batch_size, runtime)
    items = list(data)
    texts = items and all(isinstance(x, str) and not _looks_like_image(x) for x in items)
    kind = TEXT_TOWER if texts else VISION_TOWER
    return _tower(model, kind, runtime).encode(items, batch_size=batch_size)


def evaluate(
    model: str | os.PathLike | CLIPBundle,
    data: str | os.PathLike,
    recall_k: Sequence[int] = DEFAULT_RECALL_K,
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
    runtime: str = "torch",
    **data_options: Any,
) -> dict[str, float]:
    """Retrieval recall@k of a model (run folder or `NAME[#PRETRAINED]`) on a data file.

    `runtime` 'onnx' or 'onnx-int8' evaluates the run's two exported ONNX towers instead of the
    torch model, so recall can be compared per runtime on the same data.
    """
    if runtime != "torch":
        if isinstance(model, CLIPBundle):
            raise ValueError(f"runtime {runtime!r} needs a run folder, not a loaded model")
        text = get_model(model, TEXT_TOWER, device=device, runtime=runtime)
        vision = get_model(model, VISION_TOWER, device=device, runtime=runtime)
        pairs = load_pairs(data, **data_options)
        return evaluate_towers(text, vision, pairs, recall_k, batch_size, progress)
    bundle = model if isinstance(model, CLIPBundle) else get_model(model, device=device)
    pairs = load_pairs(data, **data_options)
    return evaluate_bundle(bundle, pairs, recall_k, batch_size=batch_size, progress=progress)


def _tower(model: Model | str | os.PathLike, kind: str, runtime: str | None = None) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return load_tower(model, kind, runtime=runtime or "torch")
    if isinstance(model, CLIPBundle):
        if runtime not in (None, "torch"):
            raise ValueError(f"runtime {runtime!r} needs a run or tower folder, not a CLIP")
        return tower_from_bundle(model, kind)
    if model.kind != kind:
        raise ValueError(f"this is the {model.kind} tower; these inputs need the {kind} tower")
    if runtime is not None and getattr(model, "runtime", "torch") != runtime:
        raise ValueError(
            f"this tower runs on {getattr(model, 'runtime', 'torch')}, not {runtime}: load it "
            f"with get_model(..., runtime={runtime!r})"
        )
    return model


def _is_doclist(data: Any) -> bool:
    # by its shape, so that the trainer does not import docarray: a DocList knows its doc type
    return hasattr(data, "doc_type") and hasattr(data, "__iter__")


def _looks_like_image(value: str) -> bool:
    return is_image_path(value) and os.path.exists(value)


def _encode_docs(model: Model, docs: Any, batch_size: int, runtime: str | None = None) -> Any:
    # A doc with an image is embedded as an image (its text is a stored caption), as in the Flow.
    image_docs = [d for d in docs if has_image(d)]
    text_docs = [d for d in docs if not has_image(d) and getattr(d, "text", None)]
    for kind, subset, inputs in (
        (TEXT_TOWER, text_docs, lambda: [d.text for d in text_docs]),
        (VISION_TOWER, image_docs, lambda: [_doc_image(d) for d in image_docs]),
    ):
        if subset:
            for doc, emb in zip(
                subset, _tower(model, kind, runtime).encode(inputs(), batch_size), strict=True
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
