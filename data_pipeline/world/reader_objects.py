"""Reader, part 2: find the objects in an image and read each one's attributes.

Pipeline on a float32 [S, S, 3] image in [0, 255] and its background model:

1. foreground: pixels the background cannot explain (distance > tau);
2. each foreground pixel is a mix ``bg + t (c - bg)`` of the background and a palette
   colour c, its outline colour, or c with its white highlight; keeping t > 0.4
   separates objects only 0.02 apart, whose anti-aliased gap pixels have t < 0.4;
3. connected components (crumbs, streaks and small shapeless blobs are dropped);
   for each: colour and material by the (colour, material) hypothesis that best
   explains its inner pixels (glass is the colour at alpha 0.55 over the background);
   soft coverage alpha in [0, 1] around it; shape by matching alpha against the
   coverage of each of the four shapes with the same area and centroid (blurred like
   the image, if it is); size from the fitted half-extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .components import dilate, erode, fill_holes, label
from .constants import (
    COLOURS,
    GLASS_ALPHA,
    HALF_EXTENT,
    OUTLINE_DARKEN,
    PALETTE,
    SHAPES,
    SIZES,
    SPHERE_SHINE_MIX,
)
from .geometry import CENTROID_OFFSET, F32, SHAPE_AREA, sd_shape
from .reader_background import BackgroundModel, gaussian_blur, segment_distance

PAL = np.asarray([PALETTE[c] for c in COLOURS], F32)  # [8, 3]
_DIRECTIONS = np.concatenate([PAL, PAL * F32(1 - OUTLINE_DARKEN), np.full((1, 3), 255, F32)])  # [17, 3]
TAU_MIN = 10.0  # least colour distance that counts as "not background"
TAU_NOISE = 4.0  # ... or this many times the background's typical residual
MIX_MIN = 0.4  # least fraction of object colour in a pixel of the object mask
NEAR_PIXELS = 4  # soft coverage is read this far around an object's mask (thin star arms)
OUTSIDE_MIN = 0.1  # ... where at least this much of the object's colour is seen
MAX_FIT_PIXELS = 512  # pixels used to choose an object's colour and material
MAX_ASPECT = 3.0  # objects' bounding boxes are about square; streaks are not objects
MIN_AREA = 0.25 * SHAPE_AREA["star"] * HALF_EXTENT["small"] ** 2  # normalised, 1/4 of the smallest object
ARTIFACT_FIT_ERROR = 0.6  # a blob this unlike every shape ...
ARTIFACT_AREA = 2 * MIN_AREA  # ... and this small (half the smallest object) is dropped
_SIZE_SPLIT = math.sqrt(HALF_EXTENT["small"] * HALF_EXTENT["large"])
COST_CAP = 30.0  # colour fit: a pixel no hypothesis explains costs at most this much
SECONDARY_COST = 8.0  # colour fit: extra cost of explaining a pixel by outline, shine, highlight or a mix
_WHITE = np.full(3, 255.0, F32)


@dataclass(frozen=True)
class ObjectReading:
    """One object read from an image; lengths and centre are normalised to [0, 1].

    ``fit_error``: L1 distance between its coverage and the best shape template,
    relative to its area (about 0.05 on clean renders; larger means less sure).
    """

    colour: str
    shape: str
    size: str
    material: str
    centre: tuple[float, float]
    half_extent: float
    area: float
    fit_error: float


def _mix_fraction(img: np.ndarray, bg: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For colours p [N, 3] over backgrounds bg [N, 3] and candidates [K, 3]: the
    best candidate's mix fraction t [N] (p ~ bg + t (c - bg)) and its residual [N]."""
    d = img - bg  # [N, 3]
    u = colours[None, :, :] - bg[:, None, :]  # [N, K, 3]
    t = np.clip(np.einsum("nc,nkc->nk", d, u) / np.maximum((u * u).sum(-1), 1.0), 0.0, 1.0)
    r = np.linalg.norm(d[:, None, :] - t[..., None] * u, axis=-1)  # [N, K]
    k = np.argmin(r, axis=1)
    i = np.arange(len(k))
    return t[i, k], r[i, k]


def _mix_in_triangle(d: np.ndarray, u1: np.ndarray, u2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and residual of pixels that mix the background with two object colours.

    ``d`` = p - bg [..., 3]; ``u1``, ``u2`` = object colours - bg (broadcastable).
    Finds a, b >= 0 with a + b <= 1 minimising |d - a u1 - b u2| (a point of the
    triangle bg, c1, c2) and returns (a + b, residual), each [...].
    """
    def edge(u, v=None):  # best point on segment 0-u (v None) or u-v
        if v is None:
            t = np.clip((d * u).sum(-1) / np.maximum((u * u).sum(-1), 1e-6), 0.0, 1.0)
            return t, np.linalg.norm(d - t[..., None] * u, axis=-1)
        w = v - u
        t = np.clip(((d - u) * w).sum(-1) / np.maximum((w * w).sum(-1), 1e-6), 0.0, 1.0)
        return np.ones_like(t), np.linalg.norm(d - u - t[..., None] * w, axis=-1)

    a11 = (u1 * u1).sum(-1)
    a12 = (u1 * u2).sum(-1)
    a22 = (u2 * u2).sum(-1)
    b1 = (d * u1).sum(-1)
    b2 = (d * u2).sum(-1)
    det = a11 * a22 - a12 * a12
    safe = np.where(np.abs(det) > 1e-3, det, 1.0)
    a = (b1 * a22 - b2 * a12) / safe
    b = (a11 * b2 - a12 * b1) / safe
    inside = (np.abs(det) > 1e-3) & (a >= 0) & (b >= 0) & (a + b <= 1)
    best_alpha = np.where(inside, a + b, 0.0)
    best_res = np.where(inside, np.linalg.norm(d - a[..., None] * u1 - b[..., None] * u2, axis=-1), np.inf)
    for alpha, res in (edge(u1), edge(u2), edge(u1, u2)):
        better = ~inside & (res < best_res)
        best_alpha = np.where(better, alpha, best_alpha)
        best_res = np.where(better, res, best_res)
    return best_alpha, best_res


def object_mask(img: np.ndarray, model: BackgroundModel, bg_dist: np.ndarray, tau: float) -> np.ndarray:
    """Pixels that are mostly object: bool [S, S] (steps 1-2 of the module docstring).

    Below the horizon the background under a (glass) object may also be a stroke of
    ground detail, so the mix is taken over whichever background fits better."""
    fg = bg_dist > tau
    if not fg.any():
        return fg
    t, r = _mix_fraction(img[fg], model.colour[fg], _DIRECTIONS)
    if model.detail is not None:
        on_ground = np.broadcast_to(model.ground_rows, fg.shape)[fg]
        if on_ground.any():
            p = img[fg][on_ground]
            t2, r2 = _mix_fraction(p, np.broadcast_to(model.detail, p.shape), _DIRECTIONS)
            better = r2 < r[on_ground]
            t[on_ground] = np.where(better, t2, t[on_ground])
    unsure = t <= MIX_MIN
    if unsure.any():  # maybe a mix of a colour, its white highlight and the background
        p, m = img[fg][unsure], model.colour[fg][unsure]
        best_t = t[unsure]
        best_r = np.full(len(p), np.inf, F32)
        for c in PAL:
            a, r = _mix_in_triangle(p - m, c - m, _WHITE - m)
            better = r < best_r
            best_t, best_r = np.where(better, a, best_t), np.where(better, r, best_r)
        t[unsure] = best_t
    mask = np.zeros_like(fg)
    mask[fg] = t > MIX_MIN
    return fill_holes(mask)


def _colour_and_material(p: np.ndarray, bg: np.ndarray) -> tuple[int, str, float]:
    """Palette index, material and mean colour error of an object's pixels p [N, 3]
    over backgrounds bg [N, 3].

    Each hypothesis (colour c, material) explains a fully covered pixel by its fill
    colour (c for solid, 0.55 c + 0.45 bg for glass) or, at a cost of SECONDARY_COST,
    by a mix of the fill with its outline (0.7 c) or shine (solid), with the white
    highlight (glass) or with the background (edges, blur). The hypothesis with the
    least capped mean error wins.
    """
    if len(p) > MAX_FIT_PIXELS:  # an even subsample is plenty for 16 hypotheses
        keep = np.linspace(0, len(p) - 1, MAX_FIT_PIXELS).astype(int)
        p, bg = p[keep], bg[keep]
    best = (0, "solid", np.inf)
    for i, c in enumerate(PAL):
        glass = GLASS_ALPHA * c + (1 - GLASS_ALPHA) * bg
        shine = c + SPHERE_SHINE_MIX * (_WHITE - c)
        for material, fill, segs in (
            ("solid", c, [(c * F32(1 - OUTLINE_DARKEN), c), (c, shine), (bg, c)]),
            ("glass", glass, [(glass, _WHITE), (bg, glass)]),
        ):
            d = np.linalg.norm(p - fill, axis=-1)
            for a, b in segs:
                d = np.minimum(d, SECONDARY_COST + segment_distance(p, a, b))
            cost = float(np.minimum(d, COST_CAP).mean())
            if cost < best[2]:
                best = (i, material, cost)
    return best


def _soft_alpha(img, bg, bg_dist, comp, near, colour: int, material: str) -> np.ndarray:
    """Coverage alpha [h, w] in [0, 1] of one object in its window (see module doc).

    A pixel is a mix of the background and the object's own colours (fill and white
    highlight for glass; fill and outline, or fill and shine, for solid)."""
    fill = PAL[colour]
    d = img - bg
    if material == "glass":
        pairs = [(GLASS_ALPHA * (fill - bg), _WHITE - bg)]
    else:
        shine = fill + SPHERE_SHINE_MIX * (_WHITE - fill)
        pairs = [(fill - bg, fill * F32(1 - OUTLINE_DARKEN) - bg), (fill - bg, shine - bg)]
    alpha = np.zeros(bg.shape[:2], F32)
    res = np.full(bg.shape[:2], np.inf, F32)
    for u1, u2 in pairs:
        a, r = _mix_in_triangle(d, u1, u2)
        better = r < res
        alpha = np.where(better, a, alpha)
        res = np.where(better, r, res)
    outside = near & ~comp & (res <= bg_dist) & (alpha >= OUTSIDE_MIN)
    alpha = np.where(comp | outside, alpha, 0.0)
    alpha[erode(comp)] = 1.0
    return alpha.astype(F32)


def _fit_shape(alpha: np.ndarray, x0: int, y0: int, blur: float = 0.0) -> tuple[str, float, float, float, float]:
    """Best shape template for ``alpha``: (shape, cx, cy, h, error), lengths in pixels.

    ``blur``: Gaussian std (pixels) the image was blurred with; templates get the same."""
    area = float(alpha.sum())
    ys, xs = np.mgrid[0: alpha.shape[0], 0: alpha.shape[1]].astype(F32)
    xs += F32(x0 + 0.5)
    ys += F32(y0 + 0.5)
    cx = float((alpha * xs).sum() / area)
    cy = float((alpha * ys).sum() / area)
    best = None
    for shape in SHAPES:
        h = math.sqrt(area / SHAPE_AREA[shape])
        sy = cy - CENTROID_OFFSET[shape] * h
        template = np.clip(0.5 - sd_shape(shape, xs, ys, cx, sy, h), 0.0, 1.0)
        if blur > 0:
            template = gaussian_blur(template[..., None], blur)[..., 0]
        err = float(np.abs(alpha - template).sum() / area)
        if best is None or err < best[4]:
            best = (shape, cx, sy, h, err)
    return best


def read_objects(img: np.ndarray, model: BackgroundModel, bg_dist: np.ndarray, tau: float,
                 blur: float = 0.0) -> list[ObjectReading]:
    """Every object in ``img`` [S, S, 3] float32 over the background ``model``
    (``blur``: Gaussian std in pixels the image was smoothed with, or 0)."""
    s = img.shape[0]
    bg = model.colour
    mask = object_mask(img, model, bg_dist, tau)
    labels, n = label(mask)
    out: list[ObjectReading] = []
    if n == 0:
        return out
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    big = areas >= MIN_AREA * s * s
    big[0] = False
    labels = np.where(big[labels], labels, 0)  # crumbs (stars, fragments) are not objects
    for k in np.nonzero(big)[0].tolist():
        rows, cols = np.nonzero(labels == k)
        pad = NEAR_PIXELS + 1
        y0, y1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, s)
        x0, x1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, s)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        if max(height, width) > MAX_ASPECT * min(height, width):
            continue  # a streak (a blurred horizon, a crescent of sun), not an object
        win = (slice(y0, y1), slice(x0, x1))
        comp = labels[win] == k
        inner = erode(comp)
        if inner.sum() < 3:
            inner = comp
        colour, material, _ = _colour_and_material(img[win][inner], bg[win][inner])
        others = (labels[win] != 0) & ~comp
        near = dilate(comp, NEAR_PIXELS) & ~dilate(others, 1)
        alpha = _soft_alpha(img[win], bg[win], bg_dist[win], comp, near, colour, material)
        if alpha.sum() < 1.0:
            continue
        shape, cx, cy, h, err = _fit_shape(alpha, x0, y0, blur)
        if err > ARTIFACT_FIT_ERROR and alpha.sum() < ARTIFACT_AREA * s * s:
            continue  # a small shapeless blob: ringing or noise, not an object
        out.append(ObjectReading(
            colour=COLOURS[colour], shape=shape,
            size=SIZES[0] if h / s < _SIZE_SPLIT else SIZES[1], material=material,
            centre=(cx / s, cy / s), half_extent=h / s, area=float(alpha.sum()) / (s * s), fit_error=err,
        ))
    return out
