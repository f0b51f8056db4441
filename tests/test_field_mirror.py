"""FieldMirror on its own: the fields a search returns by label, the hits it builds, and the tag
index that follows every change of the tags."""

from __future__ import annotations

import json

import numpy as np

from search.field_mirror import FieldMirror, Hit
from search.filters import parse_filter


def matching(mirror: FieldMirror, flt: dict, size: int = 10) -> list[int]:
    return np.flatnonzero(mirror.mask(parse_filter(flt), size)).tolist()


def test_loads_rows_and_builds_hits():
    mirror = FieldMirror([(0, "a", "u0", "t0", '{"colour": "red"}'), (3, "b", None, None, "{}")])
    assert len(mirror) == 2 and sorted(mirror.labels().tolist()) == [0, 3]
    hits = mirror.hits([[3, 7, 0], []], [[0.9, 0.8, 0.7], []])  # label 7: gone, skipped
    assert hits == [
        [Hit("b", 0.9, None, None, {}), Hit("a", 0.7, "u0", "t0", {"colour": "red"})],
        [],
    ]
    assert type(hits[0][0]) is Hit and hits[0][0].score == 0.9
    hits[0][0].tags["x"] = 1  # a caller's change to one hit's tags reaches no other hit
    assert mirror.hits([[3]], [[1.0]])[0][0].tags == {}
    assert matching(mirror, {"colour": "red"}) == [0]


def test_tags_follow_every_change():
    mirror = FieldMirror()
    for label in range(4):
        mirror.set(label, f"v{label}", None, None, json.dumps({"k": label % 2}))
    assert matching(mirror, {"k": 0}) == [0, 2]
    mirror.set(0, "v0", "new uri", None, '{"k": 0}')  # same tags, other fields
    mirror.set(2, "v2", None, None, '{"k": 1, "size": [38, 40]}')
    mirror.set(3, "v3", None, None, "{}")
    mirror.drop(1)
    mirror.drop(9)  # unknown: nothing to do
    assert (matching(mirror, {"k": 0}), matching(mirror, {"k": 1})) == ([0], [2])
    assert matching(mirror, {"size": {"$gt": 39}}) == [2]
    assert len(mirror) == 3 and mirror.hits([[0]], [[1.0]])[0][0].uri == "new uri"
