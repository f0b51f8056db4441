"""The search Flow's two CLIP encoders, each loading only its own tower.

`CLIPTextEncoder` embeds documents that carry `text` and no image; `CLIPImageEncoder` embeds
documents that carry an image (`blob`, `tensor` or `uri`, whatever their `text`: when indexing,
the text of an image document is its caption, kept for display). Neither touches a document
that already has an `embedding` or an `error`, so their order in the Flow does not matter; the
indexer, last, flags the documents nobody could embed.

Both bind `/index` and `/update`, the image encoder also image search (`/search_by_image`) and
the text encoder text search (`/search`). jina's gateway skips an executor that does not bind
the request's endpoint, so `/delete` and `/status` pass no encoder, and text search passes only
the text encoder: every executor on a request's path is a network hop (~1.5 ms). The Flow
therefore runs the image encoder first: jina refuses to start a chain in which an executor binds
an endpoint that the next one does not, so the text encoder, second, also binds
`/search_by_image`, to pass those documents through. A document that cannot be embedded gets
`error` set and no embedding; it never fails the request or the good documents beside it.
"""

# No `from __future__ import annotations` here: jina reads the handlers' `docs` annotations at
# runtime to learn each endpoint's schema (strings make it fall back to its legacy Document).
import os
import uuid
from collections.abc import Sequence
from typing import Any

import torch
from docarray import DocList
from jina import Executor, requests

from executors.common import (
    DEFAULT_MAX_BYTES,
    ImagePolicy,
    check_resize_cost,
    minibatches,
    resolve_device,
    resolve_dtype,
    setting,
    torch_threads,
)
from executors.flow_env import FLOW_ENV_DEFAULTS
from executors.schemas import SEARCH_IMAGE, SEARCH_TEXT, SearchDoc, has_image, is_text_query
from finetune.images import MAX_IMAGE_PIXELS
from finetune.models import TEXT_TOWER, VISION_TOWER
from finetune.towers import load_tower

DEFAULT_TEXT_TOWER = FLOW_ENV_DEFAULTS["TEXT_TOWER"]
DEFAULT_VISION_TOWER = FLOW_ENV_DEFAULTS["VISION_TOWER"]
EMPTY_TEXT_ERROR = "text is empty"


class _TowerEncoder(Executor):
    """Loads one tower and embeds the documents a subclass picks, minibatch by minibatch."""

    tower_kind: str
    default_tower: str

    def __init__(
        self,
        tower: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        minibatch_size: int = 32,
        num_threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.device = resolve_device(setting(device, "auto"))
        if self.device.type == "cpu":
            replicas = getattr(self.runtime_args, "replicas", 1) or 1
            torch.set_num_threads(int(setting(num_threads, 0)) or torch_threads(replicas))
        self.tower_source = str(setting(tower, self.default_tower))
        _check_tower_source(self.tower_source, self.tower_kind)
        self.tower = load_tower(self.tower_source, self.tower_kind, self.device)
        self.tower.module.to(resolve_dtype(self.device, setting(dtype, "auto")))
        self.minibatch_size = int(setting(minibatch_size, 32))

    # `/index` and this encoder's search endpoint are bound by each subclass, to `encode`.
    def encode(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        for doc in docs:
            # JSON documents posted to the HTTP gateway without an id arrive with id None
            if not doc.id:
                doc.id = uuid.uuid4().hex
        self.embed(docs)
        return docs

    @requests(on="/update")
    def encode_update(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        # no id is made up here: updating needs the caller's ids
        self.embed(docs)
        return docs

    def embed(self, docs: Sequence[SearchDoc]) -> None:
        """Set `embedding` (or `error`) on the documents this encoder is for, in place."""
        todo = [
            doc for doc in docs if doc.error is None and doc.embedding is None and self.accepts(doc)
        ]
        with torch.inference_mode():
            for chunk in minibatches(todo, self.minibatch_size):
                ready, inputs = [], []
                for doc in chunk:
                    try:
                        inputs.append(self.model_input(doc))
                        ready.append(doc)
                    except Exception as e:  # noqa: BLE001 - any bad input is this doc's error
                        doc.error = _message(e)
                self._encode(ready, inputs)
                for doc in chunk:
                    self.finish(doc)
        failed = sum(doc.error is not None for doc in todo)
        if failed:
            self.logger.warning(f"{failed} of {len(todo)} documents could not be embedded")

    def _encode(self, docs: list[SearchDoc], inputs: list[Any]) -> None:
        if not docs:
            return
        try:
            vectors = self.tower.encode(inputs, batch_size=len(inputs))
        except Exception as e:  # noqa: BLE001
            # Something only the model step noticed: retry one by one so it stays that doc's.
            if len(docs) == 1:
                self.logger.warning(f"embedding failed: {e!r}")
                docs[0].error = _message(e)
                return
            for doc, item in zip(docs, inputs, strict=True):
                self._encode([doc], [item])
            return
        for doc, vector in zip(docs, vectors, strict=True):
            doc.embedding = vector

    # --- what a subclass decides ---------------------------------------------------------

    def accepts(self, doc: SearchDoc) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def model_input(self, doc: SearchDoc) -> Any:  # pragma: no cover - abstract
        """What the tower's `encode` takes for this doc; raises with a message if unusable."""
        raise NotImplementedError

    def finish(self, doc: SearchDoc) -> None:
        """Called for every accepted doc after its minibatch, embedded or not."""


class CLIPTextEncoder(_TowerEncoder):
    """Embeds documents with `text` and no image, with the text tower only."""

    tower_kind = TEXT_TOWER
    default_tower = DEFAULT_TEXT_TOWER

    @requests(on=["/index", SEARCH_TEXT])
    def encode(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        return super().encode(docs)

    @requests(on=SEARCH_IMAGE)
    def pass_through(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        """Image queries, embedded by the image encoder before this one (see the module)."""
        return docs

    def accepts(self, doc: SearchDoc) -> bool:
        return is_text_query(doc)

    def model_input(self, doc: SearchDoc) -> str:
        if not doc.text.strip():
            raise ValueError(EMPTY_TEXT_ERROR)
        return clip_text(doc.text, self.tower.context_length)


class CLIPImageEncoder(_TowerEncoder):
    """Embeds documents with an image, with the vision tower only.

    `allowed_roots`: folders local `uri`s may point into (a list, or one string separated by
    `:` or `,`); none by default, so file URIs are refused. `allow_remote`: fetch http(s)
    `uri`s (off by default: the service would otherwise fetch any URL a caller names).
    """

    tower_kind = VISION_TOWER
    default_tower = DEFAULT_VISION_TOWER

    def __init__(
        self,
        tower: str | None = None,
        allowed_roots: str | list[str] | None = None,
        allow_remote: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        **kwargs: Any,
    ):
        super().__init__(tower=tower, **kwargs)
        self.policy = ImagePolicy.create(
            allowed_roots=allowed_roots,
            allow_remote=bool(setting(allow_remote, False)),
            max_bytes=int(setting(max_bytes, DEFAULT_MAX_BYTES)),
            max_pixels=int(setting(max_pixels, MAX_IMAGE_PIXELS)),
        )
        size = self.tower.config["preprocess_cfg"]["size"]
        self.short_side = int(min(size) if isinstance(size, (list, tuple)) else size)

    @requests(on=["/index", SEARCH_IMAGE])
    def encode(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        return super().encode(docs)

    def accepts(self, doc: SearchDoc) -> bool:
        return has_image(doc)

    def model_input(self, doc: SearchDoc) -> Any:
        image = self.policy.load(doc)
        check_resize_cost(image, self.short_side, self.policy.max_pixels)
        return image

    def finish(self, doc: SearchDoc) -> None:
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


def _check_tower_source(source: str, kind: str) -> None:
    """A missing tower folder named as such, rather than as an unknown model architecture."""
    looks_like_path = "#" not in source and ("/" in source or os.sep in source)
    if looks_like_path and not os.path.exists(source):
        env = "TEXT_TOWER" if kind == TEXT_TOWER else "VISION_TOWER"
        raise FileNotFoundError(
            f"{kind} tower folder {source!r} not found (relative to {os.getcwd()}): point the "
            f"encoder's `tower` ({env} in flow.yml) at a tower or run folder written by "
            f"`finetune fit` (`make demo` writes runs/demo), or give an open_clip NAME#PRETRAINED"
        )


def _message(error: Exception) -> str:
    text = str(error)
    return text if isinstance(error, ValueError) and text else f"{type(error).__name__}: {text}"
