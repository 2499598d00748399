"""Read a shapes-world image or clip back from its pixels (design/WORLD.md
"Reading a render back"): the time, the ground, and per group the colour, shape,
count, size, material and centre, the relation of two groups and, for a clip, each
group's motion. Works on any square size >= 16 (inputs above 256 px are read at
256 px) and never raises on a well-formed uint8 image, however noisy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from cascade.errors import UserError

from .constants import MIN_SIZE, MOTION_STEP
from .reader_background import (
    BackgroundModel,
    background_distance,
    background_model,
    classify_ground,
    classify_time,
    colour_offsets,
    estimate_blur,
    find_sun,
    gaussian_blur,
    noise_level,
)
from .reader_objects import TAU_MIN, TAU_NOISE, ObjectReading, read_objects

WORK_MAX = 256  # working resolution cap of the reader
STILL_SPEED = 0.4 * MOTION_STEP  # slower than this per frame reads as "still"
MIN_COLOUR_SHIFT = 2.0  # background colour offsets below this are ignored
NOISE_SMOOTH_MIN = 2.0  # per-channel noise std above which the reader blurs first

Point = tuple[float, float]


@dataclass(frozen=True)
class GroupReading:
    """Objects of one colour and shape. ``centre``: mean object centre (normalised);
    in a clip, averaged over the frames, with ``motion`` and ``velocity`` (per frame)."""

    colour: str
    shape: str
    count: int
    size: str
    material: str
    centre: Point
    objects: tuple[ObjectReading, ...] = ()
    motion: str | None = None
    velocity: Point | None = None


@dataclass(frozen=True)
class Reading:
    """What an image or clip shows. ``relation`` relates groups[0] to groups[1] by
    the dominant axis of their offset (None unless there are two groups)."""

    time: str
    ground: str
    groups: tuple[GroupReading, ...]
    relation: str | None
    frames: int = 1


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Area-averaging resampling matrix [n_out, n_in] (rows sum to 1)."""
    edges_out = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(n_in)[None, :] + 1)
    m = np.clip(hi - lo, 0.0, None)
    return (m / m.sum(1, keepdims=True)).astype(np.float32)


def to_working(image: np.ndarray) -> np.ndarray:
    """Check an RGB uint8 image [H, W, 3] and return it as float32 [S, S, 3] in
    [0, 255], S = min(H, W, 256), area-resampled when the size changes."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise UserError(f"expected an RGB image array [H, W, 3], got shape {shape}")
    if image.dtype != np.uint8:
        raise UserError(f"expected a uint8 image, got dtype {image.dtype}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise UserError(f"image size must be at least {MIN_SIZE} px, got {h}x{w}")
    img = image.astype(np.float32)
    s = min(h, w, WORK_MAX)
    if (h, w) != (s, s):
        ry, rx = _resize_matrix(h, s), _resize_matrix(w, s)
        img = np.einsum("yh,hwc,xw->yxc", ry, img, rx, optimize=True)
    return img


def _scene_background(img: np.ndarray, blur: float = 0.0) -> BackgroundModel:
    """Background model of ``img``: time, ground and sun read from it, colours shifted
    by its robust offsets (if any) and blurred like the image is (``blur`` px that the
    reader applied, or more if the horizon shows more)."""
    time, _ = classify_time(img)
    ground, _ = classify_ground(img, time)
    sun_x = find_sun(img) if time == "sunset" else None
    model = background_model(time, ground, img.shape[0], sun_x)
    sky_offset, ground_offset = colour_offsets(img, model)
    if max(np.abs(sky_offset).max(), np.abs(ground_offset).max()) > MIN_COLOUR_SHIFT:
        model = background_model(time, ground, img.shape[0], sun_x, sky_offset, ground_offset)
    blur = max(blur, estimate_blur(img, model))
    if blur > 0:
        model = replace(model, colour=gaussian_blur(model.colour, blur), blur=blur)
    return model


def _noise_sigma(img: np.ndarray, model: BackgroundModel) -> float:
    """Per-channel noise std estimated from the margins (median |N(0, s^2 I_3)| = 1.54 s)."""
    return noise_level(background_distance(img, model)) / 1.54


def _denoise(img: np.ndarray, model: BackgroundModel) -> tuple[np.ndarray, float]:
    """Blur a noisy image a little (1 px, or 1.5 px when very noisy); clean renders
    pass unchanged. Returns the image and the blur used (0.0 for none)."""
    sigma = _noise_sigma(img, model)
    if sigma <= NOISE_SMOOTH_MIN:
        return img, 0.0
    blur = 1.0 if sigma < 8.0 else 1.5
    return gaussian_blur(img, blur), blur


def _objects(img: np.ndarray, model: BackgroundModel) -> list[ObjectReading]:
    dist = background_distance(img, model)
    tau = max(TAU_MIN, TAU_NOISE * noise_level(dist))
    return read_objects(img, model, dist, tau, blur=model.blur)


def _legal(groups: list[list[ObjectReading]]) -> bool:
    """One group of 1-3 objects, or two groups of one object each (WORLD.md)."""
    return (len(groups) == 1 and len(groups[0]) <= 3) or (len(groups) == 2 and all(len(g) == 1 for g in groups))


def group_objects(objects: list[ObjectReading]) -> list[list[ObjectReading]]:
    """Group objects by (colour, shape); if that breaks the world's rules but grouping
    by colour alone (with the majority shape) does not, group by colour."""
    by_key: dict[tuple[str, str], list[ObjectReading]] = {}
    for o in objects:
        by_key.setdefault((o.colour, o.shape), []).append(o)
    groups = list(by_key.values())
    if groups and not _legal(groups):
        by_colour: dict[str, list[ObjectReading]] = {}
        for o in objects:
            by_colour.setdefault(o.colour, []).append(o)
        if _legal(list(by_colour.values())):
            groups = list(by_colour.values())
    return groups


def _mode(values):
    return Counter(values).most_common(1)[0][0]


def _group_reading(objs: list[ObjectReading]) -> GroupReading:
    return GroupReading(
        colour=_mode(o.colour for o in objs),
        shape=_mode(o.shape for o in objs),
        count=len(objs),
        size=_mode(o.size for o in objs),
        material=_mode(o.material for o in objs),
        centre=(float(np.mean([o.centre[0] for o in objs])), float(np.mean([o.centre[1] for o in objs]))),
        objects=tuple(objs),
    )


def dominant_relation(a: Point, b: Point) -> str:
    """The relation of a point ``a`` to ``b`` along the axis of their larger offset."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def _relation(groups: tuple[GroupReading, ...]) -> str | None:
    return dominant_relation(groups[0].centre, groups[1].centre) if len(groups) == 2 else None


def read_image(image: np.ndarray) -> Reading:
    """Read an RGB uint8 image [H, W, 3] (square, H >= 16) back into a :class:`Reading`."""
    img = to_working(image)
    img, blur = _denoise(img, _scene_background(img))
    model = _scene_background(img, blur)
    groups = tuple(_group_reading(g) for g in group_objects(_objects(img, model)))
    return Reading(time=model.time, ground=model.ground, groups=groups, relation=_relation(groups))


def _motion(velocity: Point) -> str:
    vx, vy = velocity
    if max(abs(vx), abs(vy)) < STILL_SPEED:
        return "still"
    if abs(vy) >= abs(vx):
        return "falling" if vy > 0 else "rising"
    return "moving right" if vx > 0 else "moving left"


def read_clip(frames: np.ndarray) -> Reading:
    """Read a clip, uint8 [F, H, W, 3], back; each group gets a motion from the
    least-squares slope of its centre over the frames where it is seen."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        raise UserError(f"expected a clip array [F, H, W, 3], got shape {getattr(frames, 'shape', None)}")
    if frames.shape[0] < 1:
        raise UserError("a clip needs at least one frame, got 0")
    imgs = [to_working(f) for f in frames]
    model = _scene_background(np.median(np.stack(imgs), axis=0))
    _, blur = _denoise(imgs[0], model)
    if blur > 0:
        imgs = [gaussian_blur(img, blur) for img in imgs]
        model = _scene_background(np.median(np.stack(imgs), axis=0), blur)
    per_frame = [group_objects(_objects(img, model)) for img in imgs]
    keys: dict[tuple[str, str], list[tuple[int, GroupReading]]] = {}
    for f, groups in enumerate(per_frame):
        for g in groups:
            gr = _group_reading(g)
            keys.setdefault((gr.colour, gr.shape), []).append((f, gr))
    n = len(imgs)
    tracks = [v for v in keys.values() if len(v) * 2 >= n] or sorted(keys.values(), key=len)[-2:]
    out = []
    for track in sorted(tracks, key=lambda v: -len(v)):
        count = _mode(g.count for _, g in track)
        seen = [(f, g) for f, g in track if g.count == count]
        fs = np.array([f for f, _ in seen], dtype=np.float64)
        xy = np.array([g.centre for _, g in seen], dtype=np.float64)
        if len(fs) >= 2 and np.ptp(fs) > 0:
            vel = tuple(float(v) for v in np.polyfit(fs, xy, 1)[0])
        else:
            vel = (0.0, 0.0)
        first = seen[0][1]
        out.append(GroupReading(
            colour=first.colour, shape=first.shape, count=count,
            size=_mode(g.size for _, g in seen), material=_mode(g.material for _, g in seen),
            centre=(float(xy[:, 0].mean()), float(xy[:, 1].mean())),
            objects=first.objects, motion=_motion(vel) if n > 1 else "still", velocity=vel,
        ))
    groups = tuple(out)
    return Reading(time=model.time, ground=model.ground, groups=groups, relation=_relation(groups), frames=n)
