"""Random scenes for each split, and the held-out combinations (design/WORLD.md).

Every scene is a pure function of ``(split, seed, clip, frames)``: the random stream
is ``PCG64(SeedSequence([WORLD_SALT, split code, clip, frames, seed]))``, so the three
splits use disjoint streams and no global random state is touched. Object
positions follow the rules of :mod:`.layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from cascade.errors import UserError, choice_error

from .constants import (
    BLADE_COUNT_RANGE,
    BLADE_HEIGHT,
    BLADE_TOP_MIN,
    COLOURS,
    DUNE_AMPLITUDE_RANGE,
    DUNE_COUNT_RANGE,
    DUNE_FREQ_RANGE,
    DUNE_Y_RANGE,
    GROUNDS,
    HORIZON,
    RELATIONS,
    SHAPES,
    SIZES,
    STAR_COUNT_RANGE,
    SUN_X_RANGE,
    TIMES,
    WAVE_COUNT_RANGE,
    WAVE_FREQ_RANGE,
    WAVE_Y_RANGE,
)
from .layout import feasible_motions, layout
from .scene import SPLITS, Background, Dune, Group, Scene, Wave

WORLD_SALT = 0x5EA5_0A1D  # fixed entropy word that keys this world's streams
_SPLIT_CODE = {"train": 1, "eval": 2, "heldout": 3}
GLASS_PROB = 0.5  # (choice)
TWO_GROUP_PROB = 0.5  # (choice)

# ---- held-out combinations (WORLD.md "Splits") ----------------------------------

HeldoutRule = Callable[[Scene], bool]
HELDOUT_RULES: dict[str, HeldoutRule] = {
    "purple star": lambda s: any(g.colour == "purple" and g.shape == "star" for g in s.groups),
    "pyramid over the ocean at night": lambda s: s.ground == "ocean"
    and s.time == "night"
    and any(g.shape == "pyramid" for g in s.groups),
    "white glass cube": lambda s: any(
        g.colour == "white" and g.material == "glass" and g.shape == "cube" for g in s.groups
    ),
    "rising in the desert": lambda s: s.ground == "desert"
    and any(g.motion == "rising" for g in s.groups),
}


def heldout_combinations(scene: Scene) -> list[str]:
    """Names of the held-out combinations that ``scene`` contains."""
    return [name for name, rule in HELDOUT_RULES.items() if rule(scene)]


def is_heldout(scene: Scene) -> bool:
    """Does ``scene`` contain at least one held-out combination?"""
    return any(rule(scene) for rule in HELDOUT_RULES.values())


def _attrs_heldout(attrs: dict) -> bool:
    """:func:`is_heldout` of sampled attributes (rules need no positions)."""
    view = SimpleNamespace(time=attrs["time"], ground=attrs["ground"],
                           groups=[SimpleNamespace(**spec) for spec in attrs["specs"]])
    return any(rule(view) for rule in HELDOUT_RULES.values())


# ---- random stream --------------------------------------------------------------


class _Draw:
    """Uniform floats in [0, 1) from a PCG64 stream, handed out one at a time cheaply."""

    def __init__(self, entropy: list[int]) -> None:
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
        self._buf: list[float] = []
        self._i = 0

    def u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(256).tolist()
            self._i = 0
        self._i += 1
        return self._buf[self._i - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.u()

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive)."""
        return lo + min(int(self.u() * (hi - lo + 1)), hi - lo)

    def choice(self, seq: tuple | list):
        return seq[min(int(self.u() * len(seq)), len(seq) - 1)]

    def points(self, n: int, x_range: tuple[float, float], y_range: tuple[float, float]):
        xy = self._rng.random((n, 2))
        xy[:, 0] = x_range[0] + (x_range[1] - x_range[0]) * xy[:, 0]
        xy[:, 1] = y_range[0] + (y_range[1] - y_range[0]) * xy[:, 1]
        return tuple(map(tuple, xy.tolist()))


# ---- attributes -----------------------------------------------------------------


def _sample_group_spec(d: _Draw, clip: bool, frames: int) -> dict:
    size = d.choice(SIZES)
    return {
        "shape": d.choice(SHAPES),
        "colour": d.choice(COLOURS),
        "size": size,
        "material": "glass" if d.u() < GLASS_PROB else "solid",
        "motion": d.choice(feasible_motions(size, frames)) if clip else "still",
        "count": 1,
    }


def _force_heldout(d: _Draw, attrs: dict, clip: bool, frames: int) -> None:
    """Make the attributes contain one held-out combination (chosen at random)."""
    specs = attrs["specs"]
    rules = ["purple star", "pyramid over the ocean at night", "white glass cube"]
    if clip and any("rising" in feasible_motions(s, frames) for s in SIZES):
        rules.append("rising in the desert")
    rule = d.choice(rules)
    g = specs[d.integer(0, len(specs) - 1)]
    if rule == "purple star":
        g.update(colour="purple", shape="star")
    elif rule == "pyramid over the ocean at night":
        attrs.update(ground="ocean", time="night")
        g["shape"] = "pyramid"
    elif rule == "white glass cube":
        g.update(colour="white", material="glass", shape="cube")
    else:
        attrs["ground"] = "desert"
        if "rising" not in feasible_motions(g["size"], frames):
            g["size"] = "small"
        g["motion"] = "rising"
    if len(specs) == 2 and specs[0]["colour"] == specs[1]["colour"] and specs[0]["shape"] == specs[1]["shape"]:
        other = specs[1] if g is specs[0] else specs[0]
        other["colour"] = d.choice([c for c in COLOURS if c != g["colour"]])


def _sample_attributes(d: _Draw, split: str, clip: bool, frames: int) -> dict:
    two = d.u() < TWO_GROUP_PROB
    attrs = {
        "time": d.choice(TIMES),
        "ground": d.choice(GROUNDS),
        "specs": [_sample_group_spec(d, clip, frames) for _ in range(2 if two else 1)],
        "relation": d.choice(RELATIONS) if two else None,
    }
    specs = attrs["specs"]
    if two:
        while specs[0]["colour"] == specs[1]["colour"] and specs[0]["shape"] == specs[1]["shape"]:
            specs[1]["colour"] = d.choice(COLOURS)
    else:
        specs[0]["count"] = d.integer(1, 3)
    if split == "heldout":
        _force_heldout(d, attrs, clip, frames)
    return attrs


# ---- background -----------------------------------------------------------------


def _background(d: _Draw, time: str, ground: str) -> Background:
    sun_x = d.uniform(*SUN_X_RANGE) if time == "sunset" else None
    stars: tuple = ()
    if time == "night":
        n = d.integer(*STAR_COUNT_RANGE)
        stars = d.points(n, (0.0, 1.0), (0.0, 1.0 if ground == "none" else HORIZON))
    waves: tuple = ()
    dunes: tuple = ()
    blades: tuple = ()
    if ground == "ocean":
        waves = tuple(
            Wave(d.uniform(*WAVE_Y_RANGE), d.uniform(*WAVE_FREQ_RANGE), d.u())
            for _ in range(d.integer(*WAVE_COUNT_RANGE))
        )
    elif ground == "desert":
        dunes = tuple(
            Dune(d.uniform(*DUNE_Y_RANGE), d.uniform(*DUNE_AMPLITUDE_RANGE), d.uniform(*DUNE_FREQ_RANGE), d.u())
            for _ in range(d.integer(*DUNE_COUNT_RANGE))
        )
    elif ground == "grass":
        n = d.integer(*BLADE_COUNT_RANGE)
        blades = d.points(n, (0.0, 1.0), (BLADE_TOP_MIN + BLADE_HEIGHT, 1.0))
    return Background(sun_x=sun_x, stars=stars, waves=waves, dunes=dunes, blades=blades)


# ---- public ---------------------------------------------------------------------


def sample_scene(split: str, seed: int, *, clip: bool = False, frames: int = 8) -> Scene:
    """A random scene of ``split``; a pure function of ``(split, seed, clip, frames)``.

    ``train`` and ``eval`` draw from the same distribution with disjoint seed streams
    and never contain a held-out combination; every ``heldout`` scene contains at
    least one (rule 4, "rising in the desert", only in clips). Images have
    ``frames == 1``; clips have ``frames`` frames.
    """
    if split not in SPLITS:
        raise choice_error("split", split, SPLITS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise UserError(f"frames must be an integer >= 1, got {frames!r}")
    n_frames = int(frames) if clip else 1
    d = _Draw([WORLD_SALT, _SPLIT_CODE[split], int(clip), n_frames, int(seed)])
    want_heldout = split == "heldout"
    for _ in range(10_000):
        attrs = _sample_attributes(d, split, clip, n_frames)
        if _attrs_heldout(attrs) != want_heldout:  # cheap early rejection, before layout
            continue
        bg = _background(d, attrs["time"], attrs["ground"])
        positions = layout(d, attrs, n_frames, bg.sun_x)
        groups = tuple(
            Group(
                count=s["count"], colour=s["colour"], shape=s["shape"], size=s["size"],
                material=s["material"], positions=tuple(p), motion=s["motion"],
            )
            for s, p in zip(attrs["specs"], positions)
        )
        scene = Scene(
            time=attrs["time"], ground=attrs["ground"], groups=groups,
            relation=attrs["relation"], frames=n_frames, background=bg,
            split=split, seed=int(seed),
        )
        if is_heldout(scene) == want_heldout:  # layout may have changed a motion
            return scene
    raise RuntimeError(f"shapes world: could not sample a {split} scene")  # pragma: no cover
