"""The whole search in one process: encoders and index together, no network, no jina.

    service = SearchService.open("runs/demo", "workspace")
    service.index([Document(id="a.jpg", uri="a.jpg", text="a red dress")])
    hits = service.search("a red dress", limit=5)

The jina Flow runs the same steps as separate executors (`executors/`); this runs them in
turn, for tests, benchmarks and anything else that wants the search without a Flow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finetune.artifact import TEXT_TOWER, VISION_TOWER, is_run_dir
from imagepairs.documents import Document, Match
from search.encoders import ImageEncoder, TextEncoder
from search.hnsw_store import HNSWStore
from search.image_policy import ImagePolicy
from search.index_shard import IMAGE, TEXT, IndexShard


class SearchError(ValueError):
    """A query the service could not answer; the message says why."""


class SearchService:
    """Index, search (by text or image), update, delete and status over `Document`s."""

    def __init__(self, text_encoder: TextEncoder, image_encoder: ImageEncoder, index: IndexShard):
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.shard = index

    @classmethod
    def open(
        cls,
        towers: str | os.PathLike,
        workspace: str | os.PathLike,
        policy: ImagePolicy | None = None,
        compatible_towers: Iterable[str] = (),
        **encoder_options: Any,
    ) -> SearchService:
        """A service over a run folder's towers (or `NAME[#PRETRAINED]`) and an index stored
        in `workspace` (`compatible_towers`: see `search.towers`)."""
        source = Path(towers)
        text, vision = (
            (source / TEXT_TOWER, source / VISION_TOWER) if is_run_dir(source) else (towers,) * 2
        )
        return cls(
            TextEncoder(text, **encoder_options),
            ImageEncoder(vision, policy=policy, **encoder_options),
            IndexShard(HNSWStore(workspace), compatible_towers=compatible_towers),
        )

    # --- the endpoints, per document -----------------------------------------------------

    def index(self, docs: list[Document]) -> list[Document]:
        """Embed and store; each document comes back with `error` None when it was stored."""
        self._embed(docs)
        return self.shard.index(docs)

    def get(self, ids: Iterable[str]) -> list[Document]:
        """Stored fields and embedding of each id (error `unknown id` when not stored)."""
        return self.shard.get([Document(id=i) for i in ids])

    def update(self, docs: list[Document], replace_tags: bool = False) -> list[Document]:
        """Change what each document names of an existing id, and nothing else (`IndexShard.update`:
        tags merged unless `replace_tags`; a new caption keeps an image's embedding)."""
        self._embed(docs)
        return self.shard.update(docs, replace_tags=replace_tags)

    def search_documents(
        self, docs: list[Document], parameters: dict[str, Any] | None = None, modality=TEXT
    ) -> list[Document]:
        """Set `matches` on each query document (text queries, or image queries)."""
        encoder = self.text_encoder if modality == TEXT else self.image_encoder
        encoder.embed(docs)
        return self.shard.search(docs, parameters or {}, modality)

    def delete(self, ids: Iterable[str]) -> list[Document]:
        return self.shard.delete([], ids)

    def status(self) -> dict[str, Any]:
        return self.shard.status()

    def towers_error(self) -> str | None:
        """Why this service's towers cannot serve its index (they are not the towers that
        embedded it), or None."""
        encoders = (self.text_encoder, self.image_encoder)
        return self.shard.towers_error({e.kind: e.fingerprint for e in encoders})

    # --- one query -----------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: bytes | None = None,
        like: str | None = None,
        limit: int = 10,
        **parameters: Any,
    ) -> list[Match]:
        """The `limit` best matches of a text, an image (bytes), or the stored document `like`
        ("more like this": its stored embedding, no re-encode; itself left out). Other
        parameters as the index's `search` takes them. Raises `SearchError`."""
        if sum(q is not None for q in (text, image, like)) != 1:
            raise SearchError("search needs one of a text, an image or a stored id")
        if like is not None:
            [stored] = self.get([like])
            if stored.error:
                raise SearchError(f"{like}: {stored.error}")
            doc, modality = Document(embedding=stored.embedding), TEXT
            limit += 1  # room for the document itself, dropped below
        elif image is None:
            doc, modality = Document(text=text), TEXT
        else:
            doc, modality = Document(blob=image), IMAGE
        [answer] = self.search_documents([doc], {"limit": limit, **parameters}, modality)
        if answer.error:
            raise SearchError(answer.error)
        if like is not None:
            return [m for m in answer.matches if m.id != like][: limit - 1]
        return answer.matches

    def close(self) -> None:
        self.shard.close()

    def __enter__(self) -> SearchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _embed(self, docs: list[Document]) -> None:
        self.image_encoder.embed(docs, indexing=True)
        self.text_encoder.embed(docs, indexing=True)
