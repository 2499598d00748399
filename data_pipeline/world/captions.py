"""Captions of a scene in several phrasings (design/WORLD.md "Groups, relations, captions").

Every style names, per group, the count, size, colour, material (glass only; one
style also says "solid"), shape and, in a clip, the motion; then the relation and
the second group; then the ground and the time. Synonyms: sphere/ball, cube/box,
pyramid/triangle, a/one. With ``drop_words`` (training only) each of the size,
material, ground and time words is left out with probability 0.2.

>>> # compact:  "three large blue spheres falling over the ocean at sunset"
>>> # sentence: "Three spheres made of glass falling into the ocean. The sun is setting."
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.errors import UserError, choice_error

from .constants import TRAIN_DROP_PROB
from .scene import SPLITS, Group, Scene

CAPTION_STYLES = ("compact", "sentence", "there_is", "setting_first", "picture", "tags")
CAPTION_SALT = 0xCA97_1011

SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural) synonyms
    "sphere": (("sphere", "spheres"), ("ball", "balls")),
    "cube": (("cube", "cubes"), ("box", "boxes")),
    "pyramid": (("pyramid", "pyramids"), ("triangle", "triangles")),
    "star": (("star", "stars"),),
}
COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("a", "one"), 2: ("two",), 3: ("three",)}
MOTION_WORDS = {
    "still": "standing still",
    "falling": "falling",
    "rising": "rising",
    "moving left": "moving left",
    "moving right": "moving right",
}
RELATION_WORDS = {
    "above": "above",
    "below": "below",
    "left of": "to the left of",
    "right of": "to the right of",
}
GROUND_PHRASES = {
    "ocean": "over the ocean",
    "desert": "in the desert",
    "grass": "on the grass",
    "none": "in the sky",
}
OCEAN_FALLING_PHRASE = "into the ocean"  # used for falling objects, as in WORLD.md
GROUND_NOUNS = {"ocean": "ocean", "desert": "desert", "grass": "grass", "none": "sky"}
TIME_PHRASES = {"day": "during the day", "sunset": "at sunset", "night": "at night"}
TIME_SENTENCES = {"day": "It is daytime.", "sunset": "The sun is setting.", "night": "It is night."}
TIME_NOUNS = {"day": "day", "sunset": "sunset", "night": "night"}


@dataclass(frozen=True)
class _Choices:
    """The random decisions behind one caption."""

    synonym: dict[str, int]  # shape -> index into SHAPE_WORDS[shape]
    one: str  # "a" or "one"
    into_ocean: bool
    drop: frozenset[str]  # subset of {"size", "material", "ground", "time"}


def _article(word_after: str, det: str) -> str:
    return "an" if det == "a" and word_after[:1] in "aeiou" else det


def _group_phrase(g: Group, ch: _Choices, *, clip: bool, material_style: str) -> str:
    """``material_style``: "adjective" (glass before the shape), "made of" (after it),
    or "solid" (adjective, and solid objects say "solid")."""
    singular, plural = SHAPE_WORDS[g.shape][ch.synonym[g.shape] % len(SHAPE_WORDS[g.shape])]
    words: list[str] = []
    if "size" not in ch.drop:
        words.append(g.size)
    words.append(g.colour)
    say_material = "material" not in ch.drop and (g.material == "glass" or material_style == "solid")
    if say_material and material_style != "made of":
        words.append(g.material)
    words.append(singular if g.count == 1 else plural)
    if say_material and material_style == "made of":
        words.append("made of glass")
    if clip:
        words.append(MOTION_WORDS[g.motion])
    det = ch.one if g.count == 1 else COUNT_WORDS[g.count][0]
    return " ".join([_article(words[0], det)] + words)


def _groups_phrase(scene: Scene, ch: _Choices, material_style: str) -> str:
    parts = [_group_phrase(g, ch, clip=scene.is_clip, material_style=material_style) for g in scene.groups]
    if scene.relation is None:
        return parts[0]
    return f"{parts[0]} {RELATION_WORDS[scene.relation]} {parts[1]}"


def _ground_phrase(scene: Scene, ch: _Choices) -> str:
    if "ground" in ch.drop:
        return ""
    if scene.ground == "ocean" and ch.into_ocean:
        return OCEAN_FALLING_PHRASE
    return GROUND_PHRASES[scene.ground]


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _render_style(style: str, scene: Scene, ch: _Choices) -> str:
    ground = _ground_phrase(scene, ch)
    time = "" if "time" in ch.drop else TIME_PHRASES[scene.time]
    if style == "compact":
        return _join(_groups_phrase(scene, ch, "adjective"), ground, time)
    if style == "sentence":
        first = _cap(_join(_groups_phrase(scene, ch, "made of"), ground)) + "."
        return _join(first, "" if "time" in ch.drop else TIME_SENTENCES[scene.time])
    if style == "there_is":
        verb = "is" if scene.groups[0].count == 1 else "are"
        return _join(f"There {verb}", _groups_phrase(scene, ch, "adjective"), ground, time) + "."
    if style == "setting_first":
        setting = ", ".join(p for p in (time, ground) if p)
        body = _groups_phrase(scene, ch, "adjective")
        return _cap(f"{setting}: {body}." if setting else f"{body}.")
    if style == "picture":
        tail = f", taken {time}" if time else ""
        return f"A picture of {_join(_groups_phrase(scene, ch, 'solid'), ground)}{tail}."
    # tags
    tags = [_groups_phrase(scene, ch, "adjective")]
    if "ground" not in ch.drop:
        tags.append(GROUND_NOUNS[scene.ground])
    if "time" not in ch.drop:
        tags.append(TIME_NOUNS[scene.time])
    return ", ".join(tags)


def caption(scene: Scene, *, style: str | None = None, seed: int = 0, drop_words: bool = False) -> str:
    """A caption of ``scene``; deterministic in (scene.split, scene.seed, style, seed).

    ``style``: one of :data:`CAPTION_STYLES`, or None to pick one at random.
    ``drop_words``: leave out each of the size / material / ground / time words with
    probability 0.2 (training only: a UserError for an eval or heldout scene).
    """
    if style is not None and style not in CAPTION_STYLES:
        raise choice_error("caption style", style, CAPTION_STYLES)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"caption seed must be a non-negative integer, got {seed!r}")
    if drop_words and scene.split in ("eval", "heldout"):
        raise UserError(f"drop_words is for training captions only, the scene is from {scene.split!r}")
    split_code = SPLITS.index(scene.split) + 1 if scene.split else 0
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [CAPTION_SALT, int(seed), split_code, int(scene.seed or 0), scene.frames])))
    u = rng.random(12).tolist()
    drop = frozenset(
        k for k, x in zip(("size", "material", "ground", "time"), u[4:8]) if drop_words and x < TRAIN_DROP_PROB
    )
    falling = any(g.motion == "falling" for g in scene.groups)
    ch = _Choices(
        synonym={s: int(u[8 + i] * 2) for i, s in enumerate(SHAPE_WORDS)},
        one=COUNT_WORDS[1][int(u[1] * 2)],
        into_ocean=falling and u[2] < 0.5,
        drop=drop,
    )
    chosen = style if style is not None else CAPTION_STYLES[int(u[0] * len(CAPTION_STYLES))]
    return _render_style(chosen, scene, ch)
