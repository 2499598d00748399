"""Reader, part 1: the time, the ground and a model of the background of an image.

Everything here works on float32 RGB images in [0, 255], [H, W, 3], at the reader's
working resolution. The background model is what WORLD.md says the picture shows
without its objects (sky gradient, sun, ground colour); fine detail that the model
leaves out (waves, dunes, blades, the edge of the sun) is
"explained" by segments between two colours, so a pixel is background when it lies
near one. Stars are not explained: white objects would be too; they are far smaller
than any object and dropped by size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import (
    DETAIL_COLOUR,
    GROUND_COLOUR,
    GROUNDS,
    HORIZON,
    SUN_COLOUR,
    SUN_RADIUS,
    TIMES,
)
from .geometry import F32, box_overlap, coverage, sd_circle
from .render import sky_colour

TOP_BAND = 0.04  # rows read for the time: objects keep 0.02 from the edge
BOTTOM_BAND = 0.04  # rows read for the ground
SUN_MATCH = 12.0  # colour distance under which a pixel is "sun coloured" (yellow is 16.7 away)
SUN_MATCH_LOOSE = 40.0  # ... on noisy or blurred images


def rows_cols(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates: ys [H], xs [W] (float32)."""
    return (np.arange(h, dtype=F32) + 0.5) / h, (np.arange(w, dtype=F32) + 0.5) / w


def _band_median(img: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.median(img[rows].reshape(-1, 3), axis=0)


def classify_time(img: np.ndarray) -> tuple[str, float]:
    """Time of day from the median colour of the top rows -> (time, colour distance)."""
    h = img.shape[0]
    ys, _ = rows_cols(h, img.shape[1])
    rows = np.nonzero(ys < TOP_BAND)[0] if (ys < TOP_BAND).any() else np.array([0])
    seen = _band_median(img, rows)
    dists = {t: float(np.linalg.norm(seen - sky_colour(t, ys[rows], "ocean").mean(0))) for t in TIMES}
    best = min(dists, key=dists.get)
    return best, dists[best]


def classify_ground(img: np.ndarray, time: str) -> tuple[str, float]:
    """Ground from the median colour of the bottom rows -> (ground, colour distance)."""
    h = img.shape[0]
    ys, _ = rows_cols(h, img.shape[1])
    mask = ys > 1.0 - BOTTOM_BAND
    rows = np.nonzero(mask)[0] if mask.any() else np.array([h - 1])
    seen = _band_median(img, rows)
    refs = {g: np.asarray(GROUND_COLOUR[g], F32) for g in GROUNDS if g != "none"}
    refs["none"] = sky_colour(time, ys[rows], "none").mean(0)
    dists = {g: float(np.linalg.norm(seen - refs[g])) for g in GROUNDS}
    best = min(dists, key=dists.get)
    return best, dists[best]


def find_sun(img: np.ndarray) -> float | None:
    """x of the setting sun's centre, from sun-coloured pixels just above the horizon.

    Looks at rows y in [HORIZON - 0.05, HORIZON - 0.01], where the sun spans at least
    x +- 0.075. A pixel is sun-like when it is nearer the sun's colour than the
    sky's and within SUN_MATCH of it (SUN_MATCH_LOOSE if that finds nothing); the
    sun is the best window of mostly sun-like columns. None when there is none.
    """
    h, w = img.shape[:2]
    ys, xs = rows_cols(h, w)
    rows = np.nonzero((ys > HORIZON - 0.06) & (ys < HORIZON - 0.015))[0]
    if len(rows) == 0:
        rows = np.array([min(int(HORIZON * h) - 1, h - 1)])
    band = img[rows]
    to_sun = np.linalg.norm(band - np.asarray(SUN_COLOUR, F32), axis=-1)
    to_sky = np.linalg.norm(band - sky_colour("sunset", ys[rows], "ocean")[:, None, :], axis=-1)
    half = max(round(0.075 * w), 1)
    for tol in (SUN_MATCH, SUN_MATCH_LOOSE):  # strict first: yellow objects are 16.7 away
        col = ((to_sun < to_sky) & (to_sun < tol)).mean(0)  # [W] fraction of the band
        score = np.convolve(col, np.ones(2 * half + 1, F32), mode="same")
        j = int(np.argmax(score))
        if score[j] < 0.4 * (2 * half + 1):
            continue
        lo = max(j - 2 * half, 0)
        sun_cols = np.nonzero(col[lo: j + 2 * half + 1] >= 0.5)[0]
        if len(sun_cols):
            return float((xs[lo + sun_cols[0]] + xs[lo + sun_cols[-1]]) / 2)
    return None


BLUR_CANDIDATES = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)  # pixels


def estimate_blur(img: np.ndarray, model: BackgroundModel) -> float:
    """Gaussian blur (std, pixels) of the image, from its horizon: the model's sharp
    sky-to-ground step, blurred by each candidate, is compared with the image's
    row medians around the horizon in the side margins (no objects there). 0.0
    without a ground (no horizon to look at)."""
    h = img.shape[0]
    if model.ground == "none":
        return 0.0
    ys, _ = rows_cols(h, h)
    band = np.abs(ys - HORIZON) < 6.0 / h
    m = max(int(0.02 * h), 1)  # side margins: no objects there
    seen = np.median(np.concatenate([img[band, :m], img[band, -m:]], axis=1), axis=1)  # [B, 3]
    profile = np.median(model.colour, axis=1)  # [H, 3]
    errs = []
    for sigma in BLUR_CANDIDATES:
        p = profile if sigma == 0 else gaussian_blur(profile[:, None, :], sigma, axes=(0,))[:, 0, :]
        errs.append(float(np.abs(seen - p[band]).sum()))
    return BLUR_CANDIDATES[int(np.argmin(errs))]


def gaussian_blur(img: np.ndarray, sigma: float, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Separable Gaussian blur of [H, W, 3] float32 with std ``sigma`` pixels along
    ``axes`` (edges replicated)."""
    r = max(int(np.ceil(2.5 * sigma)), 1)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(F32)
    k /= k.sum()
    out = img
    for axis in axes:
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, kv in enumerate(k):
            acc += kv * (p[i: i + n] if axis == 0 else p[:, i: i + n])
        out = acc
    return out


@dataclass(frozen=True)
class BackgroundModel:
    """The background an image should show: ``colour`` float32 [H, W, 3] in [0, 255].

    ``segments``: (a, b, where) colour pairs; a pixel in ``where`` (bool [H, W]) whose
    colour lies near the segment a-b (arrays broadcastable to [H, W, 3]) is
    background detail.
    """

    time: str
    ground: str
    sun_x: float | None
    colour: np.ndarray
    segments: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    detail: np.ndarray | None = None  # colour of the ground's fine detail, [3]
    ground_rows: np.ndarray | None = None  # bool [H, 1]: rows where ground detail may be
    blur: float = 0.0  # Gaussian std (pixels) the colours are blurred with


def background_model(time: str, ground: str, h: int, sun_x: float | None,
                     sky_offset: np.ndarray | None = None,
                     ground_offset: np.ndarray | None = None) -> BackgroundModel:
    """Build the background model of a square [h, h] image of this time and ground.

    ``sky_offset`` [H, 3] and ``ground_offset`` [3] shift the contract's colours
    (see :func:`colour_offsets`); None means no shift.
    """
    w = h
    ys, xs = rows_cols(h, w)
    sky = sky_colour(time, ys, ground)  # [H, 3]
    if sky_offset is not None:
        sky = sky + sky_offset
    colour = np.broadcast_to(sky[:, None, :], (h, w, 3)).copy()
    segments = []
    sun = np.asarray(SUN_COLOUR, F32)
    if sun_x is not None:
        sd = sd_circle(xs[None, :], ys[:, None], sun_x, HORIZON, SUN_RADIUS)
        cov = coverage(sd, h) * box_overlap(np.arange(h) + 0.5, 0.0, HORIZON * h).astype(F32)[:, None]
        colour += cov[..., None] * (sun - colour)
        near_sun = (sd < 3.0 / h)
        segments.append((sky[:, None, :], sun, near_sun))
    detail = ground_rows = None
    if ground != "none":
        shift = np.zeros(3, F32) if ground_offset is None else ground_offset
        base = np.asarray(GROUND_COLOUR[ground], F32) + shift
        detail = np.asarray(DETAIL_COLOUR[ground], F32) + shift
        cover = box_overlap(np.arange(h) + 0.5, HORIZON * h, float(h)).astype(F32)  # [H]
        colour += cover[:, None, None] * (base - colour)
        ground_rows = (ys - 0.5 / h >= HORIZON)[:, None]  # rows wholly in the ground
        segments.append((base, detail, ground_rows))
        horizon_rows = (np.abs(ys - HORIZON) < 1.0 / h)[:, None]
        if sun_x is not None:
            segments.append((sun, base, horizon_rows & near_sun))
    return BackgroundModel(time, ground, sun_x, colour, tuple(segments), detail, ground_rows)


def colour_offsets(img: np.ndarray, model: BackgroundModel) -> tuple[np.ndarray, np.ndarray]:
    """Robust colour offsets of an image from its model (a generated image's sky or
    ground may be a little off), read in the 0.02 side margins that objects never
    enter: a straight line in y over the sky, fitted through the medians of row
    medians of its upper and lower halves, and one median offset over the ground.
    Returns (sky_offset [H, 3], ground_offset [3]).
    """
    h = img.shape[0]
    ys, _ = rows_cols(h, h)
    m = max(int(0.02 * h), 1)  # the side margins, which objects never enter
    res = np.concatenate([img[:, :m] - model.colour[:, :m], img[:, -m:] - model.colour[:, -m:]], axis=1)
    row_med = np.median(res, axis=1)  # [H, 3]
    in_sky = np.ones(h, bool) if model.ground == "none" else ys < HORIZON - 0.02
    idx = np.nonzero(in_sky)[0]
    upper, lower = idx[: len(idx) // 2], idx[len(idx) // 2:]
    if len(upper) == 0:
        upper = lower
    m1, m2 = np.median(row_med[upper], axis=0), np.median(row_med[lower], axis=0)
    y1, y2 = float(np.median(ys[upper])), float(np.median(ys[lower]))
    slope = (m2 - m1) / (y2 - y1) if y2 > y1 else np.zeros(3, F32)
    sky_offset = (m1 + slope * (ys[:, None] - y1)).astype(F32)
    ground_offset = np.zeros(3, F32)
    if model.ground != "none":
        below = ys > HORIZON + 0.02
        if below.any():
            ground_offset = np.median(res[below].reshape(-1, 3), axis=0).astype(F32)
    return sky_offset, ground_offset


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance [H, W] from colours ``p`` [H, W, 3] to the segments a-b (broadcast)."""
    ab = b - a
    ap = p - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def background_distance(img: np.ndarray, model: BackgroundModel) -> np.ndarray:
    """How far each pixel is from anything the background explains: float32 [H, W]."""
    d = np.linalg.norm(img - model.colour, axis=-1)
    for a, b, where in model.segments:
        ds = segment_distance(img, a, b)
        d = np.where(where, np.minimum(d, ds), d)
    return d.astype(F32, copy=False)


def noise_level(dist: np.ndarray) -> float:
    """Typical background residual, from the 0.02 margins that objects never enter."""
    h, w = dist.shape
    m = max(int(0.02 * min(h, w)), 1)
    strips = np.concatenate([dist[:m].ravel(), dist[-m:].ravel(), dist[:, :m].ravel(), dist[:, -m:].ravel()])
    return float(np.median(strips))
