"""Compare a :class:`~.reader.Reading` with the scene (or parsed caption) it should show.

Groups are matched one to one (the assignment that agrees on most colours, then
shapes, then counts). Per attribute, True means every group of the scene found a
match that agrees on it:

- ``time``, ``ground``: equal.
- ``colour``, ``shape``: each scene group's match has its colour / shape.
- ``count``: each match has the right count, and the reading has no extra group.
- ``relation`` (two groups only, else None): the matched centres satisfy the
  stated relation with an offset of at least 0.15 - RELATION_TOLERANCE.
- ``motion`` (clip readings only, else None): each match moves as stated.
- ``all``: every applicable attribute above is True.

Attributes the scene or caption does not state are None.
"""

from __future__ import annotations

from itertools import permutations

from .caption_parse import ParsedCaption, ParsedGroup
from .constants import RELATION_MIN_OFFSET
from .reader import GroupReading, Reading
from .scene import Scene

RELATION_TOLERANCE = 0.05  # slack on the 0.15 offset, for imperfect generated images
ATTRIBUTES = ("time", "ground", "colour", "shape", "count", "relation", "motion")


def _targets(scene: Scene | ParsedCaption) -> tuple[list[ParsedGroup], bool]:
    """Scene groups as ParsedGroup (the common form) and whether motion is stated."""
    if isinstance(scene, ParsedCaption):
        return list(scene.groups), any(g.motion is not None for g in scene.groups)
    groups = [
        ParsedGroup(count=g.count, size=g.size, colour=g.colour, material=g.material, shape=g.shape, motion=g.motion)
        for g in scene.groups
    ]
    return groups, scene.is_clip


def relation_satisfied(relation: str, a: tuple[float, float], b: tuple[float, float],
                       min_offset: float = RELATION_MIN_OFFSET - RELATION_TOLERANCE) -> bool:
    """Does a point ``a`` stand in ``relation`` to ``b`` (y grows downward)?"""
    dx, dy = b[0] - a[0], b[1] - a[1]
    offset = {"above": dy, "below": -dy, "left of": dx, "right of": -dx}[relation]
    return offset >= min_offset


def _agree(target: ParsedGroup, got: GroupReading | None) -> tuple[int, int, int]:
    if got is None:
        return (0, 0, 0)
    return (int(target.colour == got.colour), int(target.shape == got.shape), int(target.count == got.count))


def match_groups(targets: list[ParsedGroup], groups: tuple[GroupReading, ...]) -> list[GroupReading | None]:
    """For each target group, its reading group (or None), maximising agreement."""
    padded: list[GroupReading | None] = list(groups) + [None] * len(targets)
    best, best_score = [None] * len(targets), (-1, -1, -1)
    for perm in permutations(range(len(padded)), len(targets)):
        cand = [padded[i] for i in perm]
        score = tuple(map(sum, zip(*(_agree(t, g) for t, g in zip(targets, cand)))))
        if score > best_score:
            best, best_score = cand, score
    return best


def _all_match(targets, matched, attr: str) -> bool | None:
    stated = [(getattr(t, attr), m) for t, m in zip(targets, matched) if getattr(t, attr) is not None]
    if not stated:
        return None
    return all(m is not None and getattr(m, attr) == want for want, m in stated)


def score_reading(reading: Reading, scene: Scene | ParsedCaption) -> dict[str, bool | None]:
    """Per-attribute correctness of ``reading`` against ``scene`` (module docstring)."""
    targets, clip = _targets(scene)
    matched = match_groups(targets, reading.groups)
    out: dict[str, bool | None] = {
        "time": None if scene.time is None else reading.time == scene.time,
        "ground": None if scene.ground is None else reading.ground == scene.ground,
        "colour": _all_match(targets, matched, "colour"),
        "shape": _all_match(targets, matched, "shape"),
        "count": _all_match(targets, matched, "count"),
        "relation": None,
        "motion": None,
    }
    if out["count"] is not None:
        out["count"] = out["count"] and len(reading.groups) == len(targets)
    if scene.relation is not None and len(targets) == 2:
        a, b = matched
        out["relation"] = a is not None and b is not None and relation_satisfied(scene.relation, a.centre, b.centre)
    if clip and reading.frames > 1:
        out["motion"] = _all_match(targets, matched, "motion")
    applicable = [v for v in out.values() if v is not None]
    out["all"] = bool(applicable) and all(applicable)
    return out
