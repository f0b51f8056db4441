"""A do-nothing executor (see `jina_floor.py`): what jina itself costs per hop.

It returns the documents it gets; with ``matches=N`` it also attaches N canned matches, so the
last hop answers with as much as the real indexer does. No ``from __future__ import
annotations``: jina reads the handler's ``docs`` annotation at runtime.
"""

from typing import Any

from docarray import DocList
from jina import Executor, requests

from client.wire_docs import Match, SearchDoc


class PassThrough(Executor):
    def __init__(self, matches: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.canned = [
            Match(id=f"item-{i}", score=1.0 - i / 100, uri=f"/images/item-{i}.jpg", text="a photo")
            for i in range(int(matches))
        ]

    @requests(on=["/search", "/status"])  # /status: what ServedFlow polls until it is ready
    def pass_through(self, docs: DocList[SearchDoc], **kwargs: Any) -> DocList[SearchDoc]:
        if self.canned:
            for doc in docs:
                doc.matches = DocList[Match](self.canned)
        return docs
