"""Resolution-free scene descriptions of the shapes world (design/WORLD.md).

A :class:`Scene` holds everything a render needs, in normalised canvas coordinates
([0, 1] x [0, 1], origin top-left, y down): the time and ground, one or two
:class:`Group` s with their object centres at frame 0 and their motion, and all the
random fine detail of the background (sun position, stars, waves, dunes, blades).
Rendering is therefore a pure function of ``(scene, size, frame)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cascade.errors import UserError, choice_error

from .constants import (
    COLOURS,
    COUNTS,
    GROUNDS,
    HALF_EXTENT,
    MATERIALS,
    MOTION_VELOCITY,
    MOTIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    TIMES,
)

SPLITS = ("train", "eval", "heldout")

Point = tuple[float, float]


def _check_choice(kind: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise choice_error(kind, value, allowed)


@dataclass(frozen=True)
class Group:
    """``count`` identical objects (same shape, colour, size, material and motion).

    ``positions`` are the object centres at frame 0, normalised (x, y); an object at
    frame f is at ``position + f * velocity(motion)``.
    """

    count: int
    colour: str
    shape: str
    size: str
    material: str
    positions: tuple[Point, ...]
    motion: str = "still"

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise UserError(f"group count must be one of {COUNTS}, got {self.count!r}")
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("size", self.size, SIZES)
        _check_choice("material", self.material, MATERIALS)
        _check_choice("motion", self.motion, MOTIONS)
        if len(self.positions) != self.count:
            raise UserError(f"group has count {self.count} but {len(self.positions)} positions")

    @property
    def half_extent(self) -> float:
        """Half the side of the object's bounding square, normalised."""
        return HALF_EXTENT[self.size]

    def centres(self, frame: int = 0) -> tuple[Point, ...]:
        """Object centres (x, y) at ``frame``, normalised."""
        vx, vy = MOTION_VELOCITY[self.motion]
        return tuple((x + frame * vx, y + frame * vy) for x, y in self.positions)


@dataclass(frozen=True)
class Wave:
    """An ocean wave line ``y = y0 + WAVE_AMPLITUDE * sin(2 pi (freq x + phase))``."""

    y0: float
    freq: float
    phase: float


@dataclass(frozen=True)
class Dune:
    """A dune curve ``y = y0 + amplitude * sin(2 pi (freq x + phase))``."""

    y0: float
    amplitude: float
    freq: float
    phase: float


@dataclass(frozen=True)
class Background:
    """Random fine detail; only the parts the scene's time and ground use are set.

    ``sun_x``: sun centre x (sunset only). ``stars``: (x, y) centres (night only).
    ``waves`` / ``dunes``: curves (ocean / desert). ``blades``: (x centre, y bottom)
    of each grass blade (grass only).
    """

    sun_x: float | None = None
    stars: tuple[Point, ...] = ()
    waves: tuple[Wave, ...] = ()
    dunes: tuple[Dune, ...] = ()
    blades: tuple[Point, ...] = ()


@dataclass(frozen=True)
class Scene:
    """One captionable scene or clip.

    ``relation`` relates ``groups[0]`` to ``groups[1]`` ("A above B") and is set iff
    there are two groups. ``frames`` is 1 for a still image and F for a clip.
    ``split`` and ``seed`` record where a sampled scene came from (None if built by hand).
    """

    time: str
    ground: str
    groups: tuple[Group, ...]
    relation: str | None = None
    frames: int = 1
    background: Background = field(default_factory=Background)
    split: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_choice("time", self.time, TIMES)
        _check_choice("ground", self.ground, GROUNDS)
        if len(self.groups) not in (1, 2):
            raise UserError(f"a scene has one or two groups, got {len(self.groups)}")
        if len(self.groups) == 2:
            _check_choice("relation", self.relation, RELATIONS)
            if any(g.count != 1 for g in self.groups):
                raise UserError("in a scene with two groups both groups must have count 1")
        elif self.relation is not None:
            raise UserError(f"relation {self.relation!r} needs two groups, the scene has one")
        if not isinstance(self.frames, int) or self.frames < 1:
            raise UserError(f"frames must be an integer >= 1, got {self.frames!r}")
        if self.split is not None:
            _check_choice("split", self.split, SPLITS)

    @property
    def is_clip(self) -> bool:
        """True for a clip (more than one frame)."""
        return self.frames > 1

    def to_json(self) -> str:
        """Serialise to a JSON string (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> Scene:
        """Rebuild a scene from :meth:`to_json` output (a string or its parsed dict)."""
        try:
            d = json.loads(text) if isinstance(text, str) else dict(text)
            groups = tuple(
                Group(**{**g, "positions": tuple(tuple(p) for p in g["positions"])})
                for g in d["groups"]
            )
            b = d.get("background") or {}
            background = Background(
                sun_x=b.get("sun_x"),
                stars=tuple(tuple(p) for p in b.get("stars", ())),
                waves=tuple(Wave(**w) for w in b.get("waves", ())),
                dunes=tuple(Dune(**w) for w in b.get("dunes", ())),
                blades=tuple(tuple(p) for p in b.get("blades", ())),
            )
            return cls(
                time=d["time"],
                ground=d["ground"],
                groups=groups,
                relation=d.get("relation"),
                frames=d.get("frames", 1),
                background=background,
                split=d.get("split"),
                seed=d.get("seed"),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"not a shapes-world scene JSON: {e}") from None
