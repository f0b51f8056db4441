"""The two CLIP encoders of the search service, each loading only its own tower.

`TextEncoder` embeds documents that carry `text` and no image; `ImageEncoder` embeds documents
that carry an image (`blob`, `tensor` or `uri`, whatever their `text`: when indexing, the text
of an image document is its caption, kept for display). Neither touches a document that
already has an `embedding` or an `error`, so they can run in either order. A document that
cannot be embedded gets `error` set and no embedding; it never fails the batch or the good
documents beside it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from finetune.artifact import FINGERPRINT, TEXT_TOWER, VISION_TOWER
from finetune.models import resolve_device
from finetune.tower_ids import tower_id
from finetune.towers import load_tower
from imagepairs.batching import batched
from imagepairs.documents import Document
from imagepairs.images import MAX_IMAGE_PIXELS
from search.image_policy import DEFAULT_MAX_BYTES, ImagePolicy, PixelBudget, check_resize_cost
from search.limits import MAX_REQUEST_PIXELS, document_error, refuse_oversized
from search.thumbnails import make_thumbnail

log = logging.getLogger(__name__)

EMPTY_TEXT_ERROR = "text is empty"
DEFAULT_MINIBATCH = 32
# Decoded pixels a minibatch may hold before it is encoded: one image at the decode limit.
# A minibatch of 32 such images held at once is what made an encoder's memory grow by GBs.
MAX_HELD_PIXELS = MAX_IMAGE_PIXELS


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """`auto` -> float16 on a GPU (half the memory, tensor cores), float32 on a CPU (where
    float16 matmuls are slow or missing); or `float32` / `float16` / `bfloat16` by name."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def torch_threads(replicas: int = 1, cpu_count: int | None = None) -> int:
    """Intra-op threads for one of `replicas` processes sharing this host's CPUs.

    Each replica is its own process with its own torch thread pool; left alone, every pool
    takes all cores and N replicas oversubscribe the host N times over.
    """
    if cpu_count is None:
        # the CPUs this process may run on (a container's cpuset), not the host's count
        has_affinity = hasattr(os, "sched_getaffinity")
        cpu_count = len(os.sched_getaffinity(0)) if has_affinity else os.cpu_count() or 1
    return max(1, cpu_count // max(1, int(replicas)))


class TowerEncoder:
    """Loads one tower and embeds the documents a subclass accepts, minibatch by minibatch.

    `num_threads` (CPU only): torch's intra-op threads for this process (ONNX Runtime takes
    the same); None leaves torch's. `runtime`: `torch`, or the tower folder's exported `onnx`
    / `onnx-int8` graph (`python -m finetune export RUN --onnx --int8`).
    """

    kind: str
    env_name: str  # the Flow setting that names this tower, for error messages

    def __init__(
        self,
        tower: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        minibatch_size: int = DEFAULT_MINIBATCH,
        num_threads: int | None = None,
        runtime: str = "torch",
    ):
        self.device = resolve_device(device)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        self.tower_source = os.fspath(tower)
        check_tower_source(self.tower_source, self.kind, self.env_name)
        self.runtime = runtime
        self.tower = load_tower(self.tower_source, self.kind, self.device, runtime=runtime)
        if runtime == "torch":
            self.tower.module.to(resolve_dtype(self.device, dtype))
        # the same for every runtime and precision of one tower's weights (`search.towers`)
        self.fingerprint: str = self.tower.config[FINGERPRINT]
        self.tower_id = tower_id(self.kind, self.fingerprint)
        if minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1, got {minibatch_size}")
        self.minibatch_size = int(minibatch_size)

    def embed(self, docs: Sequence[Document], indexing: bool = False) -> int:
        """Set `embedding` (or `error`) on the documents this encoder is for, in place;
        returns how many of them failed. With `indexing` the documents are to be stored
        (not queries): an image encoder also sets each image document's `thumbnail`, and the
        limits on stored fields apply. The limits of `search.limits` are checked before any
        work: a request over `MAX_DOCS_PER_REQUEST` documents is refused whole. Each embedding
        made here is marked `embedded_by` this tower, and each document to be stored carries
        this tower's fingerprint in `towers`."""
        if refuse_oversized(docs):
            return len(docs)
        refused = 0
        for doc in docs:
            if doc.error is None:
                doc.error = document_error(doc, stored=indexing)
                refused += doc.error is not None
            if indexing and doc.error is None:
                doc.towers[self.kind] = self.fingerprint
        todo = [d for d in docs if d.error is None and d.embedding is None and self.accepts(d)]
        budget = self.request_budget()
        with torch.inference_mode():
            for chunk in batched(todo, self.minibatch_size):
                ready, inputs, held = [], [], 0
                for doc in chunk:
                    try:
                        inputs.append(self.model_input(doc, indexing, budget))
                        ready.append(doc)
                    except Exception as e:  # noqa: BLE001 - any bad input is this doc's error
                        doc.error = error_message(e)
                        continue
                    held += self.held_pixels(inputs[-1])
                    if held >= MAX_HELD_PIXELS:
                        # large decoded images are encoded before more are decoded, so the
                        # memory held stays that of about one image, whatever the request
                        self._encode(ready, inputs)
                        ready, inputs, held = [], [], 0
                self._encode(ready, inputs)
                for doc in chunk:
                    self.finish(doc)
        failed = sum(doc.error is not None for doc in todo)
        if failed:
            log.warning("%d of %d documents could not be embedded", failed, len(todo))
        return refused + failed

    def _encode(self, docs: list[Document], inputs: list[Any]) -> None:
        if not docs:
            return
        try:
            vectors = self.tower.encode(inputs, batch_size=len(inputs))
        except Exception as e:  # noqa: BLE001
            # Something only the model step noticed: retry one by one so it stays that doc's.
            if len(docs) == 1:
                log.warning("embedding failed: %r", e)
                docs[0].error = error_message(e)
                return
            for doc, item in zip(docs, inputs, strict=True):
                self._encode([doc], [item])
            return
        for doc, vector in zip(docs, vectors, strict=True):
            doc.embedding = vector
            doc.embedded_by = self.tower_id

    # --- what a subclass decides ---------------------------------------------------------

    def accepts(self, doc: Document) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_input(
        self, doc: Document, indexing: bool, budget: PixelBudget | None
    ) -> Any:  # pragma: no cover - abstract
        """What the tower's `encode` takes for this doc; raises with a message if unusable.
        `budget`: what is left of the request's decoded pixels (`request_budget`)."""
        raise NotImplementedError

    def held_pixels(self, item: Any) -> int:
        """Decoded pixels a model input holds in memory until it is encoded."""
        return 0

    def request_budget(self) -> PixelBudget | None:
        """A fresh budget for one call of `embed` (None: this encoder decodes no images)."""
        return None

    def finish(self, doc: Document) -> None:
        """Called for every accepted doc after its minibatch, embedded or not."""


class TextEncoder(TowerEncoder):
    """Embeds documents with `text` and no image, with the text tower only."""

    kind = TEXT_TOWER
    env_name = "TEXT_TOWER"

    def accepts(self, doc: Document) -> bool:
        return doc.is_text_query

    def model_input(self, doc: Document, indexing: bool, budget: PixelBudget | None) -> str:
        if not doc.text.strip():
            raise ValueError(EMPTY_TEXT_ERROR)
        return clip_text(doc.text, self.tower.context_length)


class ImageEncoder(TowerEncoder):
    """Embeds documents with an image, with the vision tower only, under an `ImagePolicy`
    (by default: no local files, no remote URLs; see `search.image_policy`).

    `max_request_pixels`: the pixels one call of `embed` (one request) may decode; images
    past it get an error. Decoded images are encoded once they hold `MAX_HELD_PIXELS`, so
    the memory held stays that of about one full-size image, whatever the request holds.
    """

    kind = VISION_TOWER
    env_name = "VISION_TOWER"

    def __init__(
        self,
        tower: str | os.PathLike,
        policy: ImagePolicy | None = None,
        max_request_pixels: int = MAX_REQUEST_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(tower, **kwargs)
        self.policy = policy or ImagePolicy.create(
            max_bytes=DEFAULT_MAX_BYTES, max_pixels=MAX_IMAGE_PIXELS
        )
        self.max_request_pixels = int(max_request_pixels)
        size = self.tower.config["preprocess_cfg"]["size"]
        self.short_side = int(min(size) if isinstance(size, (list, tuple)) else size)

    def accepts(self, doc: Document) -> bool:
        return doc.has_image

    def held_pixels(self, item: Any) -> int:
        return item.width * item.height

    def request_budget(self) -> PixelBudget:
        return PixelBudget(self.max_request_pixels)

    def model_input(self, doc: Document, indexing: bool, budget: PixelBudget | None) -> Any:
        image = self.policy.load(doc, budget)
        check_resize_cost(image, self.short_side, self.policy.max_pixels)
        if indexing:
            doc.thumbnail = make_thumbnail(image)
        return image

    def finish(self, doc: Document) -> None:
        # The pixels have served their purpose; only `uri` travels on (to the index, and back).
        doc.blob = None
        doc.tensor = None


def clip_text(text: str, context_length: int) -> str:
    """Text cut to a prefix that still holds its first `context_length` tokens.

    The tokenizer truncates to the context length itself; this only bounds its work on huge
    inputs (BPE is quadratic in word length). Whitespace runs are collapsed as the tokenizer's
    own cleaning does, and every word yields at least one token, so `4 * context_length`
    words keep the tokens the model sees.
    """
    words = text.split(maxsplit=4 * context_length)[: 4 * context_length]
    return " ".join(word[: 16 * context_length] for word in words)


def check_tower_source(source: str, kind: str, env_name: str) -> None:
    """A missing tower folder named as such, rather than as an unknown model architecture."""
    looks_like_path = "#" not in source and ("/" in source or os.sep in source)
    if looks_like_path and not os.path.exists(source):
        raise FileNotFoundError(
            f"{kind} tower folder {source!r} not found (relative to {os.getcwd()}): point the "
            f"encoder's `tower` ({env_name} in flow.yml) at a tower or run folder written by "
            f"`finetune fit` (`make demo` writes runs/demo), or give an open_clip NAME#PRETRAINED"
        )


def error_message(error: Exception) -> str:
    text = str(error)
    return text if isinstance(error, ValueError) and text else f"{type(error).__name__}: {text}"
