"""`/update` changes exactly what it names (issue: an update threw away the tags it did not
name, and a new caption replaced an image's embedding by the caption's text embedding).

For each kind of stored document (an image with its caption, a text, an embedding given by the
caller) and each kind of change, `get` after the update shows the named field changed and
everything else byte-for-byte as before, the embedding and thumbnail included. In process, on
the project's tiny base towers; `test_flow_updates.py`-style checks over the wire are in
`test_flow.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from demo import BASE_MODEL_DIR
from imagepairs.documents import Document
from search.service import SearchService

TAGS = {"gender": "Men", "article": "Tshirts", "colour": "Red", "year": 2012, "season": "Fall"}
RED, BLUE = (220, 30, 30), (30, 60, 220)


def given_vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=64).astype(np.float32)


def stored_documents(png) -> dict[str, Document]:
    return {
        "image": Document(
            id="image", blob=png(RED), text="a red shirt", uri="shop/red.png", tags=dict(TAGS)
        ),
        "text": Document(id="text", text="a red shirt", tags=dict(TAGS)),
        "embedding": Document(
            id="embedding", embedding=given_vector(0), text="a red shirt", tags=dict(TAGS)
        ),
    }


# change name -> (the update's fields, parameters, the fields it may change per kind)
CHANGES = {
    "caption": ({"text": "a blue shirt"}, {}, {"*": {"text"}, "text": {"text", "embedding"}}),
    "tag set": ({"tags": {"colour": "Off White", "price": 59.9}}, {}, {"*": {"tags"}}),
    "tag removed": ({"tags": {"season": None}}, {}, {"*": {"tags"}}),
    "tags replaced": ({"tags": {"only": 1}}, {"replace_tags": True}, {"*": {"tags"}}),
    "image": (
        {"blob": "BLUE"},
        {},
        {"*": {"embedding", "embedded_by", "thumbnail"}, "image": {"embedding", "thumbnail"}},
    ),
    "embedding": (
        {"embedding": "GIVEN"},
        {},
        {"*": {"embedding", "embedded_by"}, "embedding": {"embedding"}},
    ),
}
EXPECTED_TAGS = {
    "tag set": {**TAGS, "colour": "Off White", "price": 59.9},
    "tag removed": {k: v for k, v in TAGS.items() if k != "season"},
    "tags replaced": {"only": 1},
}


def snapshot(service: SearchService, doc_id: str) -> dict:
    [doc] = service.get([doc_id])
    assert doc.error is None
    thumbnail = service.shard.thumbnails.get([doc_id]).get(doc_id)
    return {
        "text": doc.text,
        "uri": doc.uri,
        "tags": doc.tags,
        "embedded_by": doc.embedded_by,
        "embedding": doc.embedding.tobytes(),
        "thumbnail": thumbnail,
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with SearchService.open(BASE_MODEL_DIR, tmp_path_factory.mktemp("ws")) as service:
        yield service


@pytest.mark.parametrize("kind", ["image", "text", "embedding"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_an_update_changes_exactly_what_it_names(service, png, kind, change):
    original = stored_documents(png)[kind]
    original.id = f"{kind}-{change}"
    [stored] = service.index([original])
    assert stored.error is None
    before = snapshot(service, original.id)

    fields, parameters, may_change = CHANGES[change]
    values = {"BLUE": png(BLUE), "GIVEN": given_vector(1)}
    update = {k: values.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    [answer] = service.update([Document(id=original.id, **update)], **parameters)
    assert answer.error is None
    after = snapshot(service, original.id)

    changed = {field for field in before if before[field] != after[field]}
    assert changed == may_change.get(kind, may_change.get("*")), (before, after)
    if change in EXPECTED_TAGS:
        assert after["tags"] == EXPECTED_TAGS[change]
    if "embedding" in changed and change != "embedding":
        # embedded again from the new content: the same vector as indexing that content
        new = Document(text=update.get("text"), blob=update.get("blob"))
        service.text_encoder.embed([new]) if new.blob is None else service.image_encoder.embed(
            [new]
        )
        assert np.dot(np.frombuffer(after["embedding"], np.float32), new.embedding) > 0.9999


def test_a_new_caption_leaves_an_image_findable_by_itself(service, png):
    """The reported case: the image must still find itself first after its caption changes."""
    colours = [(250, 140, 20), (140, 40, 170), (10, 10, 10), (255, 255, 255)]
    images = [
        Document(id=f"shirt-{i}", blob=png(c), text=f"shirt {i}", tags={"set": "findable"})
        for i, c in enumerate(colours)
    ]
    assert all(d.error is None for d in service.index(images))
    assert service.update([Document(id="shirt-0", text="a new caption")])[0].error is None
    [best] = service.search(image=png(colours[0]), limit=1, filter={"set": "findable"})
    assert (best.id, best.text) == ("shirt-0", "a new caption") and best.score > 0.999


def test_refused_updates_change_nothing(service, png):
    [doc] = service.index([Document(id="keep", text="kept text", tags=dict(TAGS))])
    before = snapshot(service, "keep")
    too_many = {f"k{i}": i for i in range(70)}
    answers = service.update(
        [
            Document(id="keep", tags=too_many),  # merged: over MAX_TAGS
            Document(id="keep", uri="/etc/passwd"),  # an image outside IMAGE_ROOTS
            Document(id="nobody", text="x"),
        ]
    )
    assert "MAX_TAGS" in answers[0].error
    assert answers[1].error and answers[2].error == "unknown id"
    assert snapshot(service, "keep") == before
    bad = service.update([Document(id="keep", tags={"a": 1})], replace_tags="yes")
    assert bad[0].error == "replace_tags must be true or false, got 'yes'"
    assert snapshot(service, "keep") == before
