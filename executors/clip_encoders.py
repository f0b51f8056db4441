"""jina adapters over the core's encoders (`search.encoders`): `CLIPTextEncoder` and
`CLIPImageEncoder`, each loading only its own tower.

Both bind `/index` and `/update`, the image encoder also image search (`/search_by_image`) and
the text encoder text search (`/search`). jina's gateway skips an executor that does not bind
the request's endpoint, so `/delete` and `/status` pass no encoder and text search passes only
the text encoder. The Flow runs the image encoder first: jina refuses a chain in which an
executor binds an endpoint that the next one does not, so the text encoder, second, also binds
`/search_by_image`, to pass those documents through.
"""

# No `from __future__ import annotations` here: jina reads the handlers' `docs` annotations at
# runtime to learn each endpoint's schema (strings make it fall back to its legacy Document).
import uuid
from typing import Any

from docarray import DocList
from jina import requests

from client.wire import HEALTH, INDEX, SEARCH_IMAGE, SEARCH_TEXT, UPDATE
from client.wire_docs import SearchDoc, StatusDoc
from executors import health
from executors.base import ServiceExecutor
from executors.flow_env import FLOW_ENV_DEFAULTS, setting
from executors.service_metrics import ServiceMetrics
from executors.wire_conversion import refused_without_token, to_core, to_wire
from imagepairs.images import MAX_IMAGE_PIXELS
from search.encoders import DEFAULT_MINIBATCH, ImageEncoder, TextEncoder, torch_threads
from search.image_policy import DEFAULT_MAX_BYTES, ImagePolicy, path_list


class _EncoderExecutor(ServiceExecutor):
    """Settings from the Flow YAML in, the core encoder's work on each request's documents."""

    def __init__(self, token: str | None = None, **kwargs: Any) -> None:
        """`token`: what `/index` and `/update` require (see `search.access`): a refused
        request is answered before any image is decoded or text embedded."""
        super().__init__(**kwargs)
        self.token = str(setting(token, FLOW_ENV_DEFAULTS["API_TOKEN"]))
        self.metrics = ServiceMetrics(self.runtime_args)

    def encoder_options(
        self, device: str, dtype: str, minibatch_size: int, num_threads: int | None, runtime: str
    ) -> dict[str, Any]:
        replicas = getattr(self.runtime_args, "replicas", 1) or 1
        return {
            "runtime": setting(runtime, FLOW_ENV_DEFAULTS["ENCODER_RUNTIME"]),
            "device": setting(device, "auto"),
            "dtype": setting(dtype, "auto"),
            "minibatch_size": int(setting(minibatch_size, DEFAULT_MINIBATCH)),
            "num_threads": int(setting(num_threads, 0)) or torch_threads(replicas),
        }

    def embed(self, docs: DocList[SearchDoc], new_ids: bool, indexing: bool) -> DocList[SearchDoc]:
        documents = to_core(docs)
        before = [doc.error for doc in documents]
        if new_ids:
            for doc in documents:
                # JSON documents posted to the HTTP gateway without an id arrive with id None;
                # ids are given here, before the index shards, so that every shard sees one.
                doc.id = doc.id or uuid.uuid4().hex
        failed = self.encoder.embed(documents, indexing=indexing)
        self.metrics.outcomes(before, documents)
        if failed:
            self.logger.warning(f"{failed} documents could not be embedded")
        return to_wire(documents)

    @requests(on=INDEX)
    def encode(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        if refused_without_token(docs, self.token, parameters, INDEX, self.metrics):
            return docs
        return self.embed(docs, new_ids=True, indexing=True)

    @requests(on=UPDATE)
    def encode_update(
        self, docs: DocList[SearchDoc], parameters: dict | None = None, **kwargs: Any
    ) -> DocList[SearchDoc]:
        if refused_without_token(docs, self.token, parameters, UPDATE, self.metrics):
            return docs
        return self.embed(docs, new_ids=False, indexing=True)  # updates need the caller's ids

    @requests(on=HEALTH)
    def health(self, docs: DocList[StatusDoc], **kwargs: Any) -> DocList[StatusDoc]:
        """This encoder's report names its tower and fingerprint, for the index to check."""
        encoder = self.encoder
        return health.answer(
            docs, self.runtime_args, tower=encoder.kind, fingerprint=encoder.fingerprint
        )


class CLIPTextEncoder(_EncoderExecutor):
    """Embeds documents with `text` and no image, with the text tower only."""

    def __init__(
        self,
        tower: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        minibatch_size: int = DEFAULT_MINIBATCH,
        num_threads: int | None = None,
        runtime: str | None = None,
        token: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(token=token, **kwargs)
        self.encoder = TextEncoder(
            str(setting(tower, FLOW_ENV_DEFAULTS["TEXT_TOWER"])),
            **self.encoder_options(device, dtype, minibatch_size, num_threads, runtime),
        )

    @requests(on=SEARCH_TEXT)
    def encode_queries(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        return self.embed(docs, new_ids=False, indexing=False)

    @requests(on=SEARCH_IMAGE)
    def pass_through(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        """Image queries, embedded by the image encoder before this one (see the module)."""
        return docs


class CLIPImageEncoder(_EncoderExecutor):
    """Embeds documents with an image, with the vision tower only.

    `allowed_roots`: folders local `uri`s may point into (a list, or one string separated by
    `:` or `,`); none by default, so file URIs are refused. `allow_remote`: fetch http(s)
    `uri`s (off by default: the service would otherwise fetch any URL a caller names).
    """

    def __init__(
        self,
        tower: str | None = None,
        allowed_roots: str | list[str] | None = None,
        allow_remote: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        device: str = "auto",
        dtype: str = "auto",
        minibatch_size: int = DEFAULT_MINIBATCH,
        num_threads: int | None = None,
        runtime: str | None = None,
        token: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(token=token, **kwargs)
        policy = ImagePolicy.create(
            allowed_roots=path_list(setting(allowed_roots, None)),
            allow_remote=bool(setting(allow_remote, False)),
            max_bytes=int(setting(max_bytes, DEFAULT_MAX_BYTES)),
            max_pixels=int(setting(max_pixels, MAX_IMAGE_PIXELS)),
        )
        self.encoder = ImageEncoder(
            str(setting(tower, FLOW_ENV_DEFAULTS["VISION_TOWER"])),
            policy=policy,
            **self.encoder_options(device, dtype, minibatch_size, num_threads, runtime),
        )

    @requests(on=SEARCH_IMAGE)
    def encode_queries(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        return self.embed(docs, new_ids=False, indexing=False)
