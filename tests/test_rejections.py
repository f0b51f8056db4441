"""The rejection reasons of the services' metrics, from the errors the core really writes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import png

from imagepairs.documents import Document
from search.access import token_error
from search.image_policy import ImagePolicy
from search.index_shard import MISSING_ID, NO_CONTENT_ERROR, NO_EMBEDDING, id_error
from search.limits import document_error, request_error
from search.rejections import (
    BAD_IMAGE,
    INVALID_FIELD,
    INVALID_ID,
    NO_CONTENT,
    NOT_EMBEDDED,
    OTHER,
    OVER_LIMIT,
    REASONS,
    TOO_MANY_DOCUMENTS,
    UNAUTHORIZED,
    rejection_reason,
)


def image_error(doc: Document, **policy) -> str:
    with pytest.raises(ValueError) as error:
        ImagePolicy.create(**policy).load(doc)
    return str(error.value)


def test_each_error_the_core_writes_has_its_reason(tmp_path):
    errors = {
        token_error("secret", {}, "/index"): UNAUTHORIZED,
        request_error(10_000): TOO_MANY_DOCUMENTS,
        id_error("a\x00b"): INVALID_ID,
        id_error("x" * 5_000): INVALID_ID,
        MISSING_ID: INVALID_ID,
        document_error(Document(text="x" * 50_000), stored=True): OVER_LIMIT,
        document_error(Document(text="a", tags={f"k{i}": i for i in range(100)}), True): OVER_LIMIT,
        document_error(Document(text="a", tags=[1, 2]), stored=True): INVALID_FIELD,
        document_error(Document(text="a", tags={"k": {"nested": 1}}), stored=True): INVALID_FIELD,
        document_error(Document(text=5), stored=True): INVALID_FIELD,
        document_error(Document(uri="a\ud800.png"), stored=True): INVALID_FIELD,
        document_error(Document(text="a", tags={"sku": 2**64}), stored=True): INVALID_FIELD,
        id_error("\udc00"): INVALID_ID,
        NO_CONTENT_ERROR: NO_CONTENT,
        NO_EMBEDDING: NOT_EMBEDDED,
        image_error(Document(blob=b"not an image")): BAD_IMAGE,
        image_error(Document(uri="http://example.com/a.jpg")): BAD_IMAGE,
        image_error(Document(uri=str(tmp_path / "a.jpg"))): BAD_IMAGE,
        image_error(Document(uri="a.jpg"), allowed_roots=[str(tmp_path)]): BAD_IMAGE,
        image_error(Document(uri="."), allowed_roots=[str(tmp_path)]): BAD_IMAGE,
        image_error(Document(blob=png((0, 0, 0), (64, 64))), max_bytes=10): OVER_LIMIT,
        image_error(Document(blob=png((0, 0, 0), (3000, 3000))), max_pixels=1000): OVER_LIMIT,
        image_error(Document(tensor=np.zeros((4, 4, 3), dtype=np.float32))): BAD_IMAGE,
        "something nobody wrote": OTHER,
    }
    assert None not in errors
    for error, reason in errors.items():
        assert rejection_reason(error) == reason, error
    assert set(errors.values()) == set(REASONS)
