"""Parse a shapes-world caption back into the attributes it states.

Accepts every style of :mod:`.captions` and common variants (any word order inside a
group, synonyms, digits, "an", "made of glass", "solid", "into the ocean", ...).
Attributes a caption does not state are None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .constants import COLOURS

_TIME_PATTERNS = (
    ("sunset", r"\bthe sun is setting\b|\b(?:at )?sunset\b|\b(?:at )?dusk\b"),
    ("night", r"\bit is night(?:time)?\b|\b(?:at )?night(?:time)?\b"),
    ("day", r"\bit is day(?:time)?\b|\bduring the day\b|\bin the daytime\b|\bdaytime\b|\bday\b"),
)
_GROUND_PATTERNS = (
    ("ocean", r"\b(?:over|into|on|in|above) the (?:ocean|sea)\b|\bocean\b|\bsea\b"),
    ("desert", r"\b(?:in|on|over) the desert\b|\bdesert\b|\bon the sand\b"),
    ("grass", r"\b(?:on|in|over) the grass\b|\bgrass\b|\bon the lawn\b"),
    ("none", r"\b(?:in|up in) the sky\b|\bsky\b"),
)
_RELATION_PATTERNS = (
    ("left of", r"\b(?:to|on) the left of\b|\bleft of\b"),
    ("right of", r"\b(?:to|on) the right of\b|\bright of\b"),
    ("above", r"\babove\b|\bhigher than\b"),
    ("below", r"\bbelow\b|\bbeneath\b|\bunder(?:neath)?\b|\blower than\b"),
)
_MOTION_PATTERNS = (
    ("moving left", r"\b(?:moving|sliding|drifting|going) (?:to the )?left(?:wards)?\b"),
    ("moving right", r"\b(?:moving|sliding|drifting|going) (?:to the )?right(?:wards)?\b"),
    ("falling", r"\bfalling\b|\bdropping\b|\bfalls\b"),
    ("rising", r"\brising\b|\bfloating up\b|\brises\b"),
    ("still", r"\bstanding still\b|\bnot moving\b|\bmotionless\b|\bstill\b"),
)
_FILLER = r"\b(?:there (?:is|are)|a (?:picture|photo|image) of|an image of|taken)\b"
_COUNTS = {"a": 1, "an": 1, "one": 1, "single": 1, "1": 1, "two": 2, "2": 2, "pair": 2, "three": 3, "3": 3}
_SIZES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
_SHAPES = {
    "sphere": "sphere", "ball": "sphere", "orb": "sphere",
    "cube": "cube", "box": "cube", "block": "cube",
    "pyramid": "pyramid", "triangle": "pyramid",
    "star": "star",
}
_COLOUR_SYNONYMS = {c: c for c in COLOURS} | {"violet": "purple", "grey": None}


@dataclass(frozen=True)
class ParsedGroup:
    """What a caption says about one group; None where it says nothing."""

    count: int | None = None
    size: str | None = None
    colour: str | None = None
    material: str | None = None
    shape: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class ParsedCaption:
    """What a caption says about a scene; None where it says nothing.

    ``relation`` relates ``groups[0]`` to ``groups[1]``.
    """

    time: str | None
    ground: str | None
    groups: tuple[ParsedGroup, ...]
    relation: str | None = None


def _take(text: str, patterns: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
    """First-mentioned label among ``patterns``, and the text with all matches removed."""
    best: tuple[int, str] | None = None
    for label, pat in patterns:
        m = re.search(pat, text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    if best is None:
        return None, text
    for _, pat in patterns:
        text = re.sub(pat, " ", text)
    return best[1], text


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2] in _SHAPES:  # boxes
        return word[:-2]
    if word.endswith("s") and word[:-1] in _SHAPES:
        return word[:-1]
    return word


def _parse_group(chunk: str) -> ParsedGroup:
    motion, chunk = _take(chunk, _MOTION_PATTERNS)
    material = None
    if re.search(r"\b(?:made of |of )?glass(?:y)?\b|\btransparent\b", chunk):
        material = "glass"
    elif re.search(r"\bsolid\b|\bopaque\b", chunk):
        material = "solid"
    count = size = colour = shape = None
    plural = False
    for word in re.findall(r"[a-z0-9]+", chunk):
        if count is None and word in _COUNTS:
            count = _COUNTS[word]
        elif size is None and word in _SIZES:
            size = _SIZES[word]
        elif colour is None and word in _COLOUR_SYNONYMS:
            colour = _COLOUR_SYNONYMS[word]
        elif shape is None and _singular(word) in _SHAPES:
            shape = _SHAPES[_singular(word)]
            plural = _singular(word) != word
    if count == 1 and plural:
        count = None  # "a ... spheres": inconsistent, say nothing
    return ParsedGroup(count=count, size=size, colour=colour, material=material, shape=shape, motion=motion)


def parse_caption(text: str) -> ParsedCaption:
    """Parse ``text`` into the attributes it states (see :class:`ParsedCaption`)."""
    s = " " + re.sub(r"[^a-z0-9]+", " ", str(text).lower().replace("-", " ")) + " "
    time, s = _take(s, _TIME_PATTERNS)
    ground, s = _take(s, _GROUND_PATTERNS)
    s = re.sub(_FILLER, " ", s)
    # protect motion phrases so that "moving left" is not read as the relation "left of"
    relation = None
    first_rel: tuple[int, int, str] | None = None
    masked = re.sub("|".join(p for _, p in _MOTION_PATTERNS), lambda m: "#" * len(m.group()), s)
    for label, pat in _RELATION_PATTERNS:
        m = re.search(pat, masked)
        if m and (first_rel is None or m.start() < first_rel[0]):
            first_rel = (m.start(), m.end(), label)
    if first_rel is not None:
        start, end, relation = first_rel
        groups = (_parse_group(s[:start]), _parse_group(s[end:]))
    else:
        groups = (_parse_group(s),)
    return ParsedCaption(time=time, ground=ground, groups=groups, relation=relation)
