"""The tag filter language: parsing, each operator's matching, errors naming the bad part, and
TagIndex agreeing with Filter.matches through adds and removals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from search.filters import MAX_FIELDS, MAX_IN, Filter, FilterError, TagIndex, parse_filter


def matches(flt: dict, tags: dict) -> bool:
    return parse_filter(flt).matches(tags)


@pytest.mark.parametrize("empty", [None, {}])
def test_empty_filter_means_no_filter(empty):
    flt = parse_filter(empty)
    assert not flt and flt == Filter()
    assert flt.matches({}) and flt.matches({"a": 1})


def test_equality_on_strings_numbers_and_booleans():
    assert matches({"colour": "red"}, {"colour": "red", "size": 3})
    assert not matches({"colour": "red"}, {"colour": "blue"})
    assert not matches({"colour": "red"}, {})  # a missing tag matches nothing
    assert matches({"size": 3}, {"size": 3.0})  # numbers compare as numbers
    assert not matches({"size": 3}, {"size": "3"})  # a string is not a number
    assert matches({"sale": True}, {"sale": True})
    assert not matches({"sale": True}, {"sale": 1})  # a boolean is not a number
    assert not matches({"size": 1}, {"size": True})


def test_list_tags_match_when_an_element_does():
    tags = {"colour": ["red", "white"], "sizes": [38, 40], "nested": [["red"]]}
    assert matches({"colour": "white"}, tags)
    assert matches({"colour": {"$in": ["blue", "red"]}}, tags)
    assert matches({"sizes": {"$gt": 39, "$lte": 40}}, tags)
    assert not matches({"sizes": {"$gt": 40}}, tags)
    assert not matches({"nested": "red"}, tags)  # lists inside lists are not looked into
    assert not matches({"obj": "x"}, {"obj": {"x": 1}})


def test_in():
    flt = {"colour": {"$in": ["red", "blue", 7, False]}}
    assert matches(flt, {"colour": "blue"})
    assert matches(flt, {"colour": 7.0})
    assert matches(flt, {"colour": False})
    assert not matches(flt, {"colour": "green"})
    assert not matches(flt, {"colour": 0})


@pytest.mark.parametrize(
    ("ops", "inside", "outside"),
    [
        ({"$lt": 50}, [49.9, -1e9], [50, 51]),
        ({"$lte": 50}, [50, 0], [50.1]),
        ({"$gt": 10}, [10.5, 1e9], [10, 9]),
        ({"$gte": 10}, [10, 11], [9.99]),
        ({"$gte": 10, "$lt": 50}, [10, 49], [9, 50]),
        ({"$gt": 10, "$gte": 10}, [11], [10]),  # the tighter bound of a side wins
        ({"$lte": 5, "$lt": 6}, [5], [5.5]),
    ],
)
def test_ranges(ops, inside, outside):
    for value in inside:
        assert matches({"price": ops}, {"price": value}), value
    for value in outside:
        assert not matches({"price": ops}, {"price": value}), value


def test_ranges_only_match_numbers():
    assert not matches({"price": {"$gt": 0}}, {"price": "5"})
    assert not matches({"price": {"$gt": 0}}, {"price": True})  # bool is not a number


def test_fields_are_anded():
    flt = {"colour": "red", "price": {"$lt": 50}}
    assert matches(flt, {"colour": "red", "price": 10})
    assert not matches(flt, {"colour": "red", "price": 60})
    assert not matches(flt, {"colour": "blue", "price": 10})
    assert not matches(flt, {"colour": "red"})


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (["colour", "red"], "filter must be an object of field: condition, got list"),
        ("colour=red", "filter must be an object of field: condition, got str"),
        ({"price": {"$lt": "cheap"}}, 'filter.price: $lt needs a number, got "cheap"'),
        ({"price": {"$gte": True}}, "filter.price: $gte needs a number, got true"),
        ({"price": {"$gt": math.nan}}, "filter.price: $gt needs a finite number, got NaN"),
        ({"price": {"$lte": math.inf}}, "filter.price: $lte needs a finite number, got Infinity"),
        (
            {"colour": {"$regex": "r.*"}},
            "filter.colour: unknown operator $regex (use equality, $in, $gt, $gte, $lt, $lte)",
        ),
        ({"colour": {"$ne": "red"}}, "filter.colour: unknown operator $ne"),
        ({"colour": {"shade": "red"}}, "filter.colour: unknown operator shade"),
        ({"$or": [{"a": 1}]}, "filter: unknown operator $or at the top level"),
        ({"colour": {}}, "filter.colour: empty condition {}"),
        ({"colour": {"$in": []}}, "filter.colour: $in needs at least one value"),
        ({"colour": {"$in": "red"}}, 'filter.colour: $in needs a list, got "red"'),
        ({"colour": {"$in": ["red", None]}}, "filter.colour: $in[1] needs a string, number or"),
        ({"colour": {"$in": [1, math.inf]}}, "filter.colour: $in[1] needs a finite number"),
        ({"colour": {"$in": list(range(MAX_IN + 1))}}, f"at most {MAX_IN} allowed"),
        ({"colour": {"$in": [1], "$lt": 3}}, "filter.colour: $in cannot be combined with $lt"),
        ({"colour": None}, "filter.colour: equality needs a string, number or boolean, got null"),
        ({"colour": ["red", "blue"]}, 'use {"$in": [...]}'),
        ({"price": math.nan}, "filter.price: equality needs a finite number, got NaN"),
        ({"": 1}, "field names are non-empty strings"),
        ({f"f{i}": 1 for i in range(MAX_FIELDS + 1)}, f"at most {MAX_FIELDS} are allowed"),
    ],
)
def test_errors_name_the_bad_part(flt, message):
    with pytest.raises(FilterError) as info:
        parse_filter(flt)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive():
    parse_filter({f"f{i}": 1 for i in range(MAX_FIELDS)})
    parse_filter({"a": {"$in": list(range(MAX_IN))}})


# ---------------------------------------------------------------------- TagIndex


def random_tags(rng: random.Random) -> dict:
    tags: dict = {}
    if rng.random() < 0.9:
        tags["colour"] = rng.choice(["red", "blue", "green", "black"])
    if rng.random() < 0.8:
        tags["price"] = rng.choice([rng.randint(0, 100), rng.random() * 100])
    if rng.random() < 0.3:
        tags["sizes"] = [rng.randint(36, 46) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        tags["sale"] = rng.random() < 0.5
    if rng.random() < 0.1:
        tags["colour"] = rng.choice([1, True, None, {"x": 1}, ["red", "red"]])  # odd values
    return tags


FILTERS = [
    {"colour": "red"},
    {"colour": {"$in": ["red", "black", 1]}},
    {"colour": True},
    {"price": {"$gte": 20, "$lt": 30}},
    {"price": {"$gt": 99.5}},
    {"price": 50},
    {"sizes": 40},
    {"sizes": {"$lte": 37}},
    {"sale": False, "colour": "blue", "price": {"$lt": 60}},
    {"missing": 1},
]


def check_index(index: TagIndex, docs: dict[int, dict], size: int) -> None:
    for flt in FILTERS:
        parsed = parse_filter(flt)
        expected = sorted(label for label, tags in docs.items() if parsed.matches(tags))
        assert np.flatnonzero(index.mask(parsed, size)).tolist() == expected, flt


def test_tag_index_agrees_with_matches_through_changes():
    rng = random.Random(0)
    index, docs = TagIndex(), {}
    for label in range(3000):
        docs[label] = random_tags(rng)
        index.add(label, docs[label])
    check_index(index, docs, 3000)
    for _ in range(2500):  # re-tags, removals and new labels, checked now and then
        label = rng.randrange(3500)
        if label in docs and rng.random() < 0.5:
            index.remove(label, docs.pop(label))
        else:
            if label in docs:
                index.remove(label, docs[label])
            docs[label] = random_tags(rng)
            index.add(label, docs[label])
        if rng.random() < 0.01:
            check_index(index, docs, 3500)
    check_index(index, docs, 3500)
    index.compact()
    check_index(index, docs, 3500)
    assert index.mask(Filter(), 5).all()


def test_tag_index_memory_is_arrays_of_labels():
    index = TagIndex()
    for label in range(1000):
        index.add(label, {"colour": "red", "price": label})
    index.compact()
    assert index.nbytes() == 1000 * 8 + 1000 * 16
