"""Which towers embedded an index, and whether a document or query embedded by another fits it.

Each tower has a fingerprint (`finetune.artifact.fingerprint`: its config and weights). An
encoder marks every embedding it makes with `tower_id(kind, fingerprint)`, `clip-text:…` or
`clip-vision:…`, and every document it sees for storing with its kind and fingerprint, so the
index learns the text and vision towers of the Flow at its first write and keeps them
(`IndexShard.towers`). From then on an embedding made by another tower of the same kind is refused:
vectors of different towers are not comparable, however equal their dimension. An operator who
knows that a new tower embeds into the same space (a text tower fine-tuned with the image tower
locked) names it in `COMPATIBLE_TOWERS`. Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from finetune.tower_ids import TOWER_NAMES, tower_id, tower_kind

# The Flow setting that lists accepted towers, named in the errors that suggest it.
COMPATIBLE_SETTING = "COMPATIBLE_TOWERS"


def parse_compatible(value: str | Iterable[str] | None) -> frozenset[str]:
    """`COMPATIBLE_TOWERS` (tower ids separated by commas or whitespace, or a list) as a set;
    ValueError naming an entry that is not `clip-text:FINGERPRINT` or `clip-vision:…`."""
    if value is None:
        return frozenset()
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    for item in items:
        kind, _, fingerprint = str(item).partition(":")
        if kind not in TOWER_NAMES or not fingerprint:
            raise ValueError(
                f"{COMPATIBLE_SETTING}: {item!r} is not a tower id such as "
                f"clip-text:0123456789abcdef (the fingerprints /status and /health show)"
            )
    return frozenset(str(item) for item in items)


def describe(towers: Mapping[str, str]) -> str:
    """`clip-text:… and clip-vision:…`, or `no towers recorded`."""
    named = [tower_id(kind, towers[kind]) for kind in TOWER_NAMES if kind in towers]
    return " and ".join(named) or "no towers recorded"


def tower_error(
    embedded_by: str | None, recorded: Mapping[str, str], compatible: Collection[str] = ()
) -> str | None:
    """Why an embedding made by `embedded_by` does not belong in an index embedded by
    `recorded` ({kind: fingerprint}), or None (no tower named, a kind not yet recorded, the
    same fingerprint, or one listed in `compatible`)."""
    kind = tower_kind(embedded_by)
    if kind is None or kind not in recorded or embedded_by in compatible:
        return None
    if embedded_by == tower_id(kind, recorded[kind]):
        return None
    return mismatch_message(f"embedded by {embedded_by}", recorded, [embedded_by])


def towers_error(
    serving: Mapping[str, str], recorded: Mapping[str, str], compatible: Collection[str] = ()
) -> str | None:
    """Why encoders running `serving` ({kind: fingerprint}) cannot serve an index embedded by
    `recorded`, or None."""
    other = [
        tower_id(kind, fp)
        for kind, fp in sorted(serving.items())
        if tower_error(tower_id(kind, fp), recorded, compatible)
    ]
    if not other:
        return None
    return mismatch_message(f"the service runs {', '.join(other)}", recorded, other)


def mismatch_message(what: str, recorded: Mapping[str, str], other: Iterable[str]) -> str:
    """The refusal: what differs, the index's towers, and the two ways on."""
    accept = ",".join(other)
    return (
        f"{what}, but this index was embedded by {describe(recorded)}; accept a tower that "
        f"embeds into the same space with {COMPATIBLE_SETTING}={accept}, else serve the index "
        f"with its own towers or index again into a new WORKSPACE"
    )


def towers_to_record(
    recorded: Mapping[str, str], seen: Iterable[Mapping[str, str]]
) -> dict[str, str] | None:
    """The index's towers once the stored documents' towers (`seen`) are added for the kinds
    it has not recorded yet; None when nothing is new (the first tower of a kind stays)."""
    towers = dict(recorded)
    for mapping in seen:
        for kind, fingerprint in mapping.items():
            if kind in TOWER_NAMES and fingerprint and kind not in towers:
                towers[kind] = str(fingerprint)
    return towers if towers != dict(recorded) else None
