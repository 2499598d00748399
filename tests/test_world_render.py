"""Rendering of the shapes world: resolution independence, the contract's colours and
geometry checked against closed forms, clips, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade.errors import UserError
from data_pipeline.world import Group, Scene, render_clip, render_image, sample_scene
from data_pipeline.world.constants import (
    GLASS_ALPHA,
    GROUND_COLOUR,
    GROUNDS,
    HORIZON,
    PALETTE,
    SKY,
    STAR_RADIUS,
    TIMES,
)
from data_pipeline.world.geometry import SHAPE_AREA, coverage, pixel_grid, sd_shape
from data_pipeline.world.render import render_background


def _box_down(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downsample [S, S, 3] by an integer factor, float64."""
    n = img.shape[0] // factor
    return img.reshape(n, factor, n, factor, 3).astype(np.float64).mean(axis=(1, 3))


def _one_of_each_time_and_ground() -> list[Scene]:
    """The first train scene (by seed) for every (time, ground) pair."""
    found: dict[tuple[str, str], Scene] = {}
    seed = 0
    while len(found) < len(TIMES) * len(GROUNDS):
        s = sample_scene("train", seed)
        found.setdefault((s.time, s.ground), s)
        seed += 1
    return list(found.values())


def test_shape_dtype_and_determinism():
    scene = sample_scene("eval", 3)
    for size in (16, 64, 100):
        a = render_image(scene, size)
        assert a.shape == (size, size, 3) and a.dtype == np.uint8
        assert np.array_equal(a, render_image(scene, size))


@pytest.mark.parametrize("size", [64, 256])
def test_small_renders_agree_with_a_downsampled_1024_render(size):
    """64 and 256 px renders match a box-filtered 1024 px render of the same scene:
    colours differ only where the analytic anti-aliasing approximates a pixel's
    coverage of a corner or a sub-pixel feature."""
    for scene in _one_of_each_time_and_ground():
        ref = _box_down(render_image(scene, 1024), 1024 // size)
        diff = np.abs(render_image(scene, size).astype(np.float64) - ref)
        assert diff.mean() < 1.0, (scene.time, scene.ground, diff.mean())
        assert np.percentile(diff, 99) < 16.0
        assert (diff.max(axis=-1) > 32).mean() < 0.005


def test_sky_gradient_and_ground_colour_follow_the_contract():
    for scene in _one_of_each_time_and_ground():
        size = 200
        img = render_background(scene, size)  # float32, no objects
        top, horizon = np.array(SKY[scene.time][0]), np.array(SKY[scene.time][1])
        span = 1.0 if scene.ground == "none" else HORIZON
        y = 0.5 / size  # the top row's centre; take the median over x (stars are sparse)
        expected = top + (horizon - top) * y / span
        assert np.allclose(np.median(img[0], axis=0), expected, atol=1e-3)
        if scene.ground != "none":
            assert np.allclose(np.median(img[-1], axis=0), GROUND_COLOUR[scene.ground], atol=1e-3)
        else:
            expected = top + (horizon - top) * (1 - y)
            assert np.allclose(np.median(img[-1], axis=0), expected, atol=1e-3)


@pytest.mark.parametrize("shape", ["sphere", "cube", "pyramid", "star"])
def test_analytic_coverage_integrates_to_the_shape_area(shape):
    """Summed pixel coverage = the shape's closed-form area (pi h^2, 4 h^2, 2 h^2,
    5 r R sin 36); the coverage rule is exact along edges and errs only at corners
    and star tips, so the error shrinks as the pixels do."""
    for size, rel in ((64, 0.05), (256, 0.005), (1024, 0.001)):
        px, py = pixel_grid(size, 0, size, 0, size)
        h = 0.07  # the small size: corners weigh most
        total = coverage(sd_shape(shape, px, py, 0.5, 0.5, h), size).sum(dtype=np.float64)
        assert total / size**2 == pytest.approx(SHAPE_AREA[shape] * h * h, rel=rel), size


def _plain_scene(shape: str, colour: str, material: str, ground: str = "grass") -> Scene:
    g = Group(count=1, colour=colour, shape=shape, size="large", material=material, positions=((0.5, 0.3),))
    return Scene(time="day", ground=ground, groups=(g,))


def test_object_colours_solid_and_glass():
    size = 256
    cy, cx = int(0.3 * size), int(0.5 * size)
    img = render_image(_plain_scene("cube", "red", "solid"), size)
    assert tuple(img[cy, cx]) == PALETTE["red"]  # a solid cube's centre is its flat colour
    assert tuple(img[cy, cx + int(0.11 * size)]) == PALETTE["red"]
    scene = _plain_scene("cube", "blue", "glass")
    img = render_image(scene, size)
    bg = render_background(scene, size)[cy, cx]
    expected = GLASS_ALPHA * np.array(PALETTE["blue"]) + (1 - GLASS_ALPHA) * bg
    assert np.abs(img[cy, cx] - expected).max() <= 0.5 + 1e-3  # alpha 0.55 over the sky
    # the white highlight sits at the upper left, inside the object
    hy, hx = int((0.3 - 0.45 * 0.12) * size), int((0.5 - 0.45 * 0.12) * size)
    assert tuple(img[hy, hx]) == (255, 255, 255)


def test_solid_outline_is_thirty_percent_darker():
    size = 1024  # the 0.006 outline is 6 px wide here
    img = render_image(_plain_scene("cube", "yellow", "solid"), size)
    y = int(0.3 * size)
    x = int((0.5 - 0.12 + 0.003) * size)  # inside the left edge, within the outline
    assert np.abs(img[y, x] - 0.7 * np.array(PALETTE["yellow"])).max() <= 1.0


def test_stars_keep_their_ink_at_every_size():
    """Night sky: the stars' total ink (in units of white over the sky) is
    n * pi * r^2 of the canvas at 64, 256 and 1024 px alike."""
    scene = next(s for s in (sample_scene("train", k) for k in range(200)) if s.time == "night" and s.ground == "none")
    n = len(scene.background.stars)
    for size in (64, 256, 1024):
        img = render_background(scene, size).astype(np.float64)
        ys = (np.arange(size) + 0.5) / size
        top, bottom = np.array(SKY["night"][0]), np.array(SKY["night"][1])
        sky = top + (bottom - top) * ys[:, None]
        white = 255.0 - sky
        ink = ((img - sky[:, None, :]) * white[:, None, :]).sum(-1) / (white * white).sum(-1)[:, None]
        assert ink.sum() / size**2 == pytest.approx(n * math.pi * STAR_RADIUS**2, rel=0.1)


def test_clip_frames_match_images_and_only_objects_move():
    scene = next(s for s in (sample_scene("eval", k, clip=True) for k in range(100))
                 if any(g.motion != "still" for g in s.groups))
    clip = render_clip(scene, 64)
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    for f in (0, 3, 7):
        assert np.array_equal(clip[f], render_image(scene, 64, f))
    # pixels that no object reaches in any frame are identical in every frame
    touched = np.zeros((64, 64), bool)
    for f in range(8):
        for g in scene.groups:
            for x, y in g.centres(f):
                r = g.half_extent + 2 / 64
                touched[max(int((y - r) * 64), 0): int((y + r) * 64) + 1, max(int((x - r) * 64), 0): int((x + r) * 64) + 1] = True
    assert (clip[:, ~touched] == clip[0, ~touched]).all()
    assert not np.array_equal(clip[0], clip[-1])


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: render_image(sample_scene("train", 0), 15), "15"),
        (lambda: render_image(sample_scene("train", 0), 64.0), "64.0"),
        (lambda: render_clip(sample_scene("train", 0), 8), "8"),
        (lambda: render_image(sample_scene("train", 0), 64, frame=1), "1"),
    ],
)
def test_bad_sizes_and_frames_raise_user_error(call, needle):
    with pytest.raises(UserError) as e:
        call()
    assert needle in str(e.value)
