"""Where objects go: positions that keep the layout rules in every frame of a clip.

Rules: every object's bounding square lies inside the canvas with a MARGIN gap, two
bounding squares are at least GAP apart (this implies WORLD.md's "centre distance >
sum of half-extents + 0.02" and also keeps cubes' corners apart), no object comes
within GAP of the sun disk, and "A above B" holds with B.y - A.y >= 0.15 and
|A.x - B.x| < B.y - A.y (the stated relation is the dominant one); likewise for the
other relations.
"""

from __future__ import annotations

import math
from typing import Protocol

from .constants import (
    GAP,
    HALF_EXTENT,
    HORIZON,
    MARGIN,
    MOTION_STEP,
    MOTION_VELOCITY,
    MOTIONS,
    RELATION_MIN_OFFSET,
    SUN_RADIUS,
)
from .scene import Scene

_PLACE_TRIES = 200


class Draw(Protocol):
    """The random stream a layout draws from (see :class:`.sampling._Draw`)."""

    def u(self) -> float: ...
    def uniform(self, lo: float, hi: float) -> float: ...
    def choice(self, seq): ...


def feasible_motions(size: str, frames: int) -> tuple[str, ...]:
    """Motions whose whole path (0.05 per frame) fits in the canvas for this size."""
    path = MOTION_STEP * (frames - 1)
    if frames < 2 or path > 1.0 - 2.0 * (HALF_EXTENT[size] + MARGIN) - 1e-9:
        return ("still",)
    return MOTIONS


def _relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """A (at a) stands in ``relation`` to B (at b), dominantly (see module docstring)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if relation == "above":
        return dy >= RELATION_MIN_OFFSET and abs(dx) < dy
    if relation == "below":
        return -dy >= RELATION_MIN_OFFSET and abs(dx) < -dy
    if relation == "left of":
        return dx >= RELATION_MIN_OFFSET and abs(dy) < dx
    return -dx >= RELATION_MIN_OFFSET and abs(dy) < -dx  # right of


def _try_layout(d: Draw, attrs: dict, frames: int, sun_x: float | None) -> list[list] | None:
    """One attempt at placing every object; None if some object found no place."""
    placed: list[tuple[float, float, float, float, float]] = []  # x, y, vx, vy, h
    out: list[list] = []
    last = frames - 1
    rel = attrs["relation"]
    for gi, spec in enumerate(attrs["specs"]):
        h = HALF_EXTENT[spec["size"]]
        vx, vy = MOTION_VELOCITY[spec["motion"]]
        lo = MARGIN + h
        x_lo, x_hi = lo - min(0.0, vx * last), 1.0 - lo - max(0.0, vx * last)
        y_lo, y_hi = lo - min(0.0, vy * last), 1.0 - lo - max(0.0, vy * last)
        if gi == 1 and rel is not None:
            # B only where the relation's offset holds in the first and the last frame
            # (motion is linear, so it then holds in every frame).
            ax, ay, avx, avy, _ = placed[0]
            off = RELATION_MIN_OFFSET
            if rel == "above":
                y_lo = max(y_lo, ay + off, ay + off + (avy - vy) * last)
            elif rel == "below":
                y_hi = min(y_hi, ay - off, ay - off + (avy - vy) * last)
            elif rel == "left of":
                x_lo = max(x_lo, ax + off, ax + off + (avx - vx) * last)
            else:
                x_hi = min(x_hi, ax - off, ax - off + (avx - vx) * last)
            if x_lo > x_hi or y_lo > y_hi:
                return None
        pos: list = []
        for _ in range(spec["count"]):
            for _try in range(_PLACE_TRIES):
                x, y = d.uniform(x_lo, x_hi), d.uniform(y_lo, y_hi)
                if _fits(x, y, vx, vy, h, placed, frames, sun_x):
                    break
            else:
                return None
            placed.append((x, y, vx, vy, h))
            pos.append((x, y))
        out.append(pos)
    if rel is not None:
        (a,), (b,) = placed[0:1], placed[1:2]
        for f in range(frames):
            pa = (a[0] + f * a[2], a[1] + f * a[3])
            pb = (b[0] + f * b[2], b[1] + f * b[3])
            if not _relation_holds(rel, pa, pb):
                return None
    return out


def _close_frames(d0: float, dv: float, lim: float) -> tuple[float, float]:
    """The times t with |d0 + t dv| <= lim, as an interval (empty: lo > hi)."""
    if dv == 0.0:
        return (-math.inf, math.inf) if abs(d0) <= lim else (1.0, 0.0)
    lo, hi = (-lim - d0) / dv, (lim - d0) / dv
    return (lo, hi) if lo <= hi else (hi, lo)


def _fits(x, y, vx, vy, h, placed, frames, sun_x) -> bool:
    """Does an object (centre x, y at frame 0, velocity vx, vy, half-extent h) keep its
    bounding square GAP away from every placed one and from the sun in every frame?"""
    last = frames - 1
    for px, py, pvx, pvy, ph in placed:
        # the squares are too close while both |dx(t)| and |dy(t)| <= lim: an interval of t
        lim = h + ph + GAP
        xlo, xhi = _close_frames(x - px, vx - pvx, lim)
        ylo, yhi = _close_frames(y - py, vy - pvy, lim)
        lo, hi = max(xlo, ylo, 0.0), min(xhi, yhi, float(last))
        if lo <= hi and math.ceil(lo - 1e-12) <= math.floor(hi + 1e-12):
            return False
    if sun_x is not None:
        for f in range(frames if (vx or vy) else 1):
            ex = max(abs(x + f * vx - sun_x) - h, 0.0)
            ey = max(abs(y + f * vy - HORIZON) - h, 0.0)
            if ex * ex + ey * ey <= (SUN_RADIUS + GAP) ** 2:
                return False
    return True


def layout(d: Draw, attrs: dict, frames: int, sun_x: float | None) -> list[list]:
    """Place objects; if motions make it impossible, resample them, finally go still."""
    for round_ in range(40):
        for _ in range(8):
            out = _try_layout(d, attrs, frames, sun_x)
            if out is not None:
                return out
        for spec in attrs["specs"]:  # this combination of motions / sizes is too tight
            if round_ >= 20:
                spec["motion"] = "still"
            elif spec["motion"] != "still" or d.u() < 0.5:
                spec["motion"] = d.choice(feasible_motions(spec["size"], frames))
    raise RuntimeError("shapes world: no layout found (a bug: still objects always fit)")


def layout_problems(scene: Scene) -> list[str]:
    """Every layout rule (module docstring) the scene breaks, checked in every frame."""
    problems = []
    sun_x = scene.background.sun_x
    for f in range(scene.frames):
        boxes = []
        for gi, g in enumerate(scene.groups):
            h = g.half_extent
            for (x, y) in g.centres(f):
                if min(x, y) - h < MARGIN - 1e-9 or max(x, y) + h > 1 - MARGIN + 1e-9:
                    problems.append(f"frame {f}: group {gi} object leaves the canvas margin")
                boxes.append((x, y, h, gi))
                if sun_x is not None and not _fits(x, y, 0, 0, h, [], 1, sun_x):
                    problems.append(f"frame {f}: group {gi} object touches the sun")
        for i in range(len(boxes)):
            for j in range(i):
                (x1, y1, h1, _), (x2, y2, h2, _) = boxes[i], boxes[j]
                if max(abs(x1 - x2), abs(y1 - y2)) <= h1 + h2 + GAP - 1e-9:
                    problems.append(f"frame {f}: objects {j} and {i} closer than the gap")
        if scene.relation is not None:
            a, b = scene.groups[0].centres(f)[0], scene.groups[1].centres(f)[0]
            if not _relation_holds(scene.relation, a, b):
                problems.append(f"frame {f}: relation {scene.relation!r} does not hold")
    return problems
