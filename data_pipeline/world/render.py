"""Render a :class:`Scene` at any square size (design/WORLD.md "Canvas" .. "Objects").

Everything is drawn with analytic anti-aliasing (see :mod:`.geometry`), so a render at
64 or 256 px agrees with a box-downsampled 1024 px render. Work is done in float32
RGB in [0, 255] and rounded to uint8 once at the end. Objects are drawn only inside
their bounding windows; a clip draws its static background once.
"""

from __future__ import annotations

import math

import numpy as np

from cascade.errors import UserError

from .constants import (
    BLADE_HEIGHT,
    BLADE_WIDTH,
    DETAIL_COLOUR,
    DUNE_STROKE,
    GLASS_ALPHA,
    GLASS_HIGHLIGHT_OFFSET,
    GLASS_HIGHLIGHT_RADIUS,
    GROUND_COLOUR,
    HIGHLIGHT_COLOUR,
    HORIZON,
    MIN_SIZE,
    OUTLINE_DARKEN,
    OUTLINE_WIDTH,
    PALETTE,
    SKY,
    SPHERE_SHINE_MIX,
    SPHERE_SHINE_OFFSET,
    SPHERE_SHINE_RADIUS,
    STAR_COLOUR,
    STAR_RADIUS,
    SUN_COLOUR,
    SUN_RADIUS,
    WAVE_AMPLITUDE,
    WAVE_STROKE,
)
from .geometry import (
    F32,
    box_overlap,
    coverage,
    pixel_grid,
    sd_circle,
    sd_shape,
    window,
)
from .scene import Scene

_WHITE = np.asarray(HIGHLIGHT_COLOUR, F32)


def check_size(size: object) -> int:
    """Validate a square canvas size (an int >= MIN_SIZE) and return it."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise UserError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    return int(size)


def _rgb(colour: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(colour, dtype=F32)


def _blend(region: np.ndarray, cov: np.ndarray, colour: np.ndarray) -> None:
    """In place: region <- region + cov * (colour - region); cov [h, w] in [0, 1]."""
    region += cov[..., None] * (colour - region)


def sky_colour(time: str, y: np.ndarray, ground: str) -> np.ndarray:
    """Sky gradient colour [..., 3] at normalised heights ``y`` [...].

    The gradient runs from the top colour at y = 0 to the horizon colour at the
    horizon; with ground ``none`` the sky fills the canvas and the gradient is
    stretched to reach the horizon colour at the bottom (y = 1) (a choice).
    """
    top, bottom = _rgb(SKY[time][0]), _rgb(SKY[time][1])
    span = 1.0 if ground == "none" else HORIZON
    t = np.clip(np.asarray(y, F32) / F32(span), 0.0, 1.0)[..., None]
    return top + t * (bottom - top)


def _draw_rects(canvas: np.ndarray, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray,
                colour: np.ndarray) -> None:
    """Axis-aligned rectangles [x0, x1] x [y0, y1] (arrays [K], pixel units), filtered
    exactly (separable box overlaps); only the pixels they touch are visited, and
    where rectangles overlap their coverage adds up (to at most 1)."""
    h, w = canvas.shape[:2]
    c0, r0 = np.floor(x0).astype(int), np.floor(y0).astype(int)
    nx = int((np.ceil(x1) - c0).max()) + 1
    ny = int((np.ceil(y1) - r0).max()) + 1
    cols = c0[:, None] + np.arange(nx)[None, :]  # [K, nx]
    rows = r0[:, None] + np.arange(ny)[None, :]  # [K, ny]
    ox = np.clip(np.minimum(x1[:, None], cols + 1) - np.maximum(x0[:, None], cols), 0.0, 1.0)
    oy = np.clip(np.minimum(y1[:, None], rows + 1) - np.maximum(y0[:, None], rows), 0.0, 1.0)
    ox[(cols < 0) | (cols >= w)] = 0.0
    oy[(rows < 0) | (rows >= h)] = 0.0
    cov = oy[:, :, None] * ox[:, None, :]  # [K, ny, nx]
    keep = cov > 0
    flat = (rows[:, :, None] * w + cols[:, None, :])[keep]
    pix, inv = np.unique(flat, return_inverse=True)
    total = np.minimum(np.bincount(inv, weights=cov[keep]), 1.0).astype(F32)[:, None]
    ys, xs = pix // w, pix % w
    canvas[ys, xs] += total * (colour - canvas[ys, xs])


def _draw_dots(canvas: np.ndarray, centres: tuple, radius: float, colour: np.ndarray, size: int) -> None:
    """Small disks (stars). Below one pixel of radius each becomes an equal-area
    square filtered exactly, so the ink per star is the same at every size."""
    if not centres:
        return
    rp = radius * size
    if rp >= 1.0:
        for cx, cy in centres:
            x0, x1, y0, y1 = window(cx, cy, radius, size)
            px, py = pixel_grid(size, x0, x1, y0, y1)
            _blend(canvas[y0:y1, x0:x1], coverage(sd_circle(px, py, cx, cy, radius), size), colour)
        return
    xy = np.asarray(centres, dtype=np.float64) * size
    half = 0.5 * math.sqrt(math.pi) * rp
    _draw_rects(canvas, xy[:, 0] - half, xy[:, 0] + half, xy[:, 1] - half, xy[:, 1] + half, colour)


def _draw_curve(canvas: np.ndarray, y0: float, amp: float, freq: float, phase: float,
                stroke: float, colour: np.ndarray, size: int) -> None:
    """A stroke of width ``stroke`` along y = y0 + amp sin(2 pi (freq x + phase))."""
    r0 = max(math.floor((y0 - amp - stroke) * size) - 1, 0)
    r1 = min(math.ceil((y0 + amp + stroke) * size) + 1, size)
    px, py = pixel_grid(size, 0, size, r0, r1)
    arg = F32(2 * math.pi) * (F32(freq) * px + F32(phase))
    yc = y0 + amp * np.sin(arg)
    slope = F32(amp * 2 * math.pi * freq) * np.cos(arg)
    d = (py - yc) * F32(size) / np.sqrt(1.0 + slope * slope)  # [rows, W] pixels
    half = F32(0.5 * stroke * size)
    cov = np.clip(np.minimum(d + half, 0.5) - np.maximum(d - half, -0.5), 0.0, 1.0)
    _blend(canvas[r0:r1], cov, colour)


def _draw_blades(canvas: np.ndarray, blades: tuple, colour: np.ndarray, size: int) -> None:
    """Grass blades: rectangles BLADE_WIDTH x BLADE_HEIGHT standing on (x, y bottom)."""
    if not blades:
        return
    b = np.asarray(blades, dtype=np.float64) * size  # [K, 2] (x centre, y bottom) in px
    half = 0.5 * BLADE_WIDTH * size
    _draw_rects(canvas, b[:, 0] - half, b[:, 0] + half, b[:, 1] - BLADE_HEIGHT * size, b[:, 1], colour)


def render_background(scene: Scene, size: int) -> np.ndarray:
    """Sky, sun, stars, ground and its detail: float32 [size, size, 3] in [0, 255]."""
    size = check_size(size)
    bg = scene.background
    rows = (np.arange(size, dtype=F32) + 0.5) / size
    canvas = np.empty((size, size, 3), F32)
    canvas[:] = sky_colour(scene.time, rows, scene.ground)[:, None, :]
    _draw_dots(canvas, bg.stars, STAR_RADIUS, _rgb(STAR_COLOUR), size)
    if bg.sun_x is not None:
        x0, x1, y0, y1 = window(bg.sun_x, HORIZON, SUN_RADIUS, size)
        px, py = pixel_grid(size, x0, x1, y0, y1)
        cov = coverage(sd_circle(px, py, bg.sun_x, HORIZON, SUN_RADIUS), size)
        # only the upper half shows, with or without ground (a choice for ground none)
        cov *= box_overlap(np.arange(y0, y1) + 0.5, 0.0, HORIZON * size).astype(F32)[:, None]
        _blend(canvas[y0:y1, x0:x1], cov, _rgb(SUN_COLOUR))
    if scene.ground == "none":
        return canvas
    cover = box_overlap(np.arange(size) + 0.5, HORIZON * size, float(size)).astype(F32)  # [H]
    base = _rgb(GROUND_COLOUR[scene.ground])
    canvas[cover >= 1.0] = base
    for r in np.nonzero((cover > 0.0) & (cover < 1.0))[0]:  # the row the horizon crosses
        canvas[r] += cover[r] * (base - canvas[r])
    detail = _rgb(DETAIL_COLOUR[scene.ground])
    for w in bg.waves:
        _draw_curve(canvas, w.y0, WAVE_AMPLITUDE, w.freq, w.phase, WAVE_STROKE, detail, size)
    for d in bg.dunes:
        _draw_curve(canvas, d.y0, d.amplitude, d.freq, d.phase, DUNE_STROKE, detail, size)
    _draw_blades(canvas, bg.blades, detail, size)
    return canvas


def draw_object(canvas: np.ndarray, shape: str, colour: str, material: str,
                h: float, cx: float, cy: float) -> None:
    """Draw one object in place on a float32 [S, S, 3] canvas (WORLD.md "Objects").

    Solid: flat colour with a 0.006 inner outline 30% darker (and for a sphere a
    lighter shine at the upper left). Glass: the colour at alpha 0.55 over what lies
    behind, plus an opaque white highlight disk of radius 0.25 h at the upper left.
    """
    size = canvas.shape[0]
    x0, x1, y0, y1 = window(cx, cy, h, size)
    if x0 >= x1 or y0 >= y1:
        return
    px, py = pixel_grid(size, x0, x1, y0, y1)
    sd = sd_shape(shape, px, py, cx, cy, h)
    cov = coverage(sd, size)
    region = canvas[y0:y1, x0:x1]
    fill = _rgb(PALETTE[colour])
    if material == "solid":
        inner = coverage(sd + OUTLINE_WIDTH, size)
        _blend(region, cov, fill * F32(1.0 - OUTLINE_DARKEN))
        _blend(region, inner, fill)
        if shape == "sphere":
            o = SPHERE_SHINE_OFFSET * h
            shine = coverage(sd_circle(px, py, cx - o, cy - o, SPHERE_SHINE_RADIUS * h), size)
            _blend(region, np.minimum(shine, inner), fill + F32(SPHERE_SHINE_MIX) * (_WHITE - fill))
        return
    _blend(region, cov * F32(GLASS_ALPHA), fill)
    dx, dy = GLASS_HIGHLIGHT_OFFSET[shape]
    hl = coverage(sd_circle(px, py, cx + dx * h, cy + dy * h, GLASS_HIGHLIGHT_RADIUS * h), size)
    _blend(region, np.minimum(hl, cov), _WHITE)


def _draw_objects(canvas: np.ndarray, scene: Scene, frame: int) -> None:
    for g in scene.groups:
        for cx, cy in g.centres(frame):
            draw_object(canvas, g.shape, g.colour, g.material, g.half_extent, cx, cy)


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Round a float32 canvas in [0, 255] to uint8 (clobbers ``canvas``)."""
    np.clip(canvas, 0.0, 255.0, out=canvas)
    canvas += 0.5
    return canvas.astype(np.uint8)


def render_image(scene: Scene, size: int, frame: int = 0) -> np.ndarray:
    """Render frame ``frame`` of ``scene``: uint8 [size, size, 3] RGB."""
    size = check_size(size)
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < scene.frames:
        raise UserError(f"frame must be an integer in [0, {scene.frames - 1}], got {frame!r}")
    canvas = render_background(scene, size)
    _draw_objects(canvas, scene, int(frame))
    return _to_uint8(canvas)


def render_clip(scene: Scene, size: int) -> np.ndarray:
    """Render every frame of ``scene``: uint8 [F, size, size, 3] (F = scene.frames)."""
    size = check_size(size)
    background = render_background(scene, size)
    out = np.empty((scene.frames, size, size, 3), np.uint8)
    for f in range(scene.frames):
        canvas = background.copy()
        _draw_objects(canvas, scene, f)
        out[f] = _to_uint8(canvas)
    return out
