"""The two towers' names, and the id that says which tower made an embedding.

Plain names and string functions, no torch: the search core and the client read them without
loading a model. A tower's fingerprint is `finetune.artifact.fingerprint`.
"""

from __future__ import annotations

TEXT_TOWER = "clip-text"
VISION_TOWER = "clip-vision"
TOWER_NAMES = (TEXT_TOWER, VISION_TOWER)


def tower_id(kind: str, fingerprint: str) -> str:
    """`clip-text:0123abcd…`: the tower of that kind with that fingerprint."""
    return f"{kind}:{fingerprint}"


def tower_kind(embedded_by: str | None) -> str | None:
    """The tower name in a tower id (`clip-text`, `clip-vision`), or None when it names none."""
    if not embedded_by:
        return None
    kind = embedded_by.split(":", 1)[0]
    return kind if kind in TOWER_NAMES else None
