"""Signed distances and analytic pixel coverage of the world's shapes.

All functions take pixel-centre coordinates ``px, py`` (float arrays of one shape,
normalised canvas units) and return arrays of that shape. A signed distance is
negative inside. Coverage of a pixel of side ``1 / size`` is approximated by
``clip(0.5 - sd * size, 0, 1)`` (exact for a straight edge crossing the pixel
along an axis), the "equivalent analytic coverage" WORLD.md allows; features thinner
than a pixel use exact 1-D box-filter overlaps instead, so their total ink does
not depend on the resolution.
"""

from __future__ import annotations

import math

import numpy as np

from .constants import STAR_INNER_RATIO

F32 = np.float32


def sd_circle(px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance to a disk of radius ``r`` centred at (cx, cy)."""
    return np.hypot(px - cx, py - cy) - r


def sd_square(px: np.ndarray, py: np.ndarray, cx: float, cy: float, h: float) -> np.ndarray:
    """Signed distance to the axis-aligned square [cx-h, cx+h] x [cy-h, cy+h]."""
    qx = np.abs(px - cx) - h
    qy = np.abs(py - cy) - h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def sd_polygon(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon ``verts`` [N, 2] (Quilez, sdPolygon)."""
    pts = np.asarray(verts, dtype=np.float64).tolist()  # python floats keep px's dtype
    px, py = np.broadcast_arrays(px, py)
    d2 = (px - pts[0][0]) ** 2 + (py - pts[0][1]) ** 2
    inside = np.zeros(px.shape, dtype=bool)
    for i in range(len(pts)):
        vx, vy = pts[i]
        ux, uy = pts[i - 1]
        ex, ey = ux - vx, uy - vy
        wx, wy = px - vx, py - vy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d2, bx * bx + by * by, out=d2)
        # crossing-number parity: the edge crosses the horizontal ray from p
        c1 = py >= vy
        c2 = py < uy
        c3 = ex * wy > ey * wx
        inside ^= (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


def pyramid_vertices(cx: float, cy: float, h: float) -> np.ndarray:
    """Upward isosceles triangle, base = height = 2h, in the square [c-h, c+h]."""
    return np.array([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], dtype=np.float64)


def star_vertices(cx: float, cy: float, h: float) -> np.ndarray:
    """Five-pointed star, one point straight up, outer radius h, inner 0.45 h."""
    k = np.arange(10)
    ang = -math.pi / 2 + k * math.pi / 5
    rad = np.where(k % 2 == 0, h, STAR_INNER_RATIO * h)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def sd_shape(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, h: float) -> np.ndarray:
    """Signed distance to ``shape`` of half-extent ``h`` centred at (cx, cy)."""
    if shape == "sphere":
        return sd_circle(px, py, cx, cy, h)
    if shape == "cube":
        return sd_square(px, py, cx, cy, h)
    if shape == "pyramid":
        return sd_polygon(px, py, pyramid_vertices(cx, cy, h))
    if shape == "star":
        return sd_polygon(px, py, star_vertices(cx, cy, h))
    raise ValueError(f"unknown shape {shape!r}")


#: Area of each shape in units of h^2 (disk pi, square 4, triangle 2, star 5 r R sin 36).
SHAPE_AREA: dict[str, float] = {
    "sphere": math.pi,
    "cube": 4.0,
    "pyramid": 2.0,
    "star": 5.0 * STAR_INNER_RATIO * math.sin(math.pi / 5),
}
#: Vertical offset of each shape's centroid below its centre, in units of h.
CENTROID_OFFSET: dict[str, float] = {"sphere": 0.0, "cube": 0.0, "pyramid": 1.0 / 3.0, "star": 0.0}


def coverage(sd: np.ndarray, size: int) -> np.ndarray:
    """Pixel coverage in [0, 1] from a signed distance in canvas units, float32."""
    return np.clip(0.5 - sd * size, 0.0, 1.0).astype(F32, copy=False)


def box_overlap(centres: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Length of [lo, hi] inside each unit pixel [c - 0.5, c + 0.5], in pixel units.

    ``centres`` [P] pixel centres and ``lo``/``hi`` [K] (or scalars), all in pixels;
    returns [K, P] (or [P]) in [0, 1]. This is the exact 1-D box filter of a segment.
    """
    c = np.asarray(centres, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)[..., None]
    hi = np.asarray(hi, dtype=np.float64)[..., None]
    return np.clip(np.minimum(hi, c + 0.5) - np.maximum(lo, c - 0.5), 0.0, 1.0)


def pixel_grid(size: int, x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates of columns [x0, x1) and rows [y0, y1).

    Returns float32 ``px`` [1, x1-x0] and ``py`` [y1-y0, 1] (broadcastable to the window).
    """
    px = ((np.arange(x0, x1, dtype=F32) + F32(0.5)) / F32(size))[None, :]
    py = ((np.arange(y0, y1, dtype=F32) + F32(0.5)) / F32(size))[:, None]
    return px, py


def window(cx: float, cy: float, r: float, size: int, h: int | None = None) -> tuple[int, int, int, int]:
    """Pixel window (x0, x1, y0, y1) covering the square [c - r, c + r], plus one pixel,
    clipped to a ``size`` x ``size`` (or ``size`` x ``h``) canvas."""
    rows = size if h is None else h
    x0 = max(math.floor((cx - r) * size) - 1, 0)
    x1 = min(math.ceil((cx + r) * size) + 1, size)
    y0 = max(math.floor((cy - r) * size) - 1, 0)
    y1 = min(math.ceil((cy + r) * size) + 1, rows)
    return x0, x1, y0, y1
