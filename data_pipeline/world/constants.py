"""Every number of the shapes-world contract (design/WORLD.md), in one place.

Coordinates are normalised: the canvas is [0, 1] x [0, 1], origin top-left, y grows
downward. Colours are sRGB triples in [0, 255]. Lengths (radii, strokes, extents)
are fractions of the canvas side, so one scene renders at any square size.

Names marked "(choice)" are not fixed by WORLD.md; they are this implementation's
decisions and are listed in the package docstring.
"""

from __future__ import annotations

from typing import Final


def hex_rgb(code: str) -> tuple[int, int, int]:
    """'#3A7BD5' -> (58, 123, 213)."""
    code = code.lstrip("#")
    return int(code[0:2], 16), int(code[2:4], 16), int(code[4:6], 16)


RGB = tuple[int, int, int]

# ---- canvas ---------------------------------------------------------------------
HORIZON: Final = 0.62
MIN_SIZE: Final = 16  # smallest square size accepted by render/read (choice)

# ---- sky (time of day): gradient top -> horizon ---------------------------------
TIMES: Final = ("day", "sunset", "night")
SKY: Final[dict[str, tuple[RGB, RGB]]] = {
    "day": (hex_rgb("#3A7BD5"), hex_rgb("#A8D8FF")),
    "sunset": (hex_rgb("#2E1A47"), hex_rgb("#F2743A")),
    "night": (hex_rgb("#070B1F"), hex_rgb("#1B2550")),
}
SUN_RADIUS: Final = 0.09
SUN_COLOUR: Final = hex_rgb("#FFC93C")
SUN_X_RANGE: Final = (0.2, 0.8)
STAR_COUNT_RANGE: Final = (30, 60)  # inclusive
STAR_RADIUS: Final = 0.004
STAR_COLOUR: Final = hex_rgb("#FFFFFF")

# ---- ground ---------------------------------------------------------------------
GROUNDS: Final = ("ocean", "desert", "grass", "none")
GROUND_COLOUR: Final[dict[str, RGB]] = {
    "ocean": hex_rgb("#0E4C92"),
    "desert": hex_rgb("#E3C27A"),
    "grass": hex_rgb("#3C8D2F"),
}
DETAIL_COLOUR: Final[dict[str, RGB]] = {
    "ocean": hex_rgb("#4F9BE0"),
    "desert": hex_rgb("#C9A45C"),
    "grass": hex_rgb("#2A6E20"),
}
WAVE_COUNT_RANGE: Final = (6, 10)
WAVE_AMPLITUDE: Final = 0.006
WAVE_STROKE: Final = 0.004
WAVE_FREQ_RANGE: Final = (1.5, 4.0)  # cycles per canvas width (choice)
WAVE_Y_RANGE: Final = (0.645, 0.985)  # wave centre lines (choice)
DUNE_COUNT_RANGE: Final = (2, 4)
DUNE_STROKE: Final = 0.01
DUNE_AMPLITUDE_RANGE: Final = (0.01, 0.03)  # dunes are sine curves too (choice)
DUNE_FREQ_RANGE: Final = (0.5, 1.5)  # (choice)
DUNE_Y_RANGE: Final = (0.67, 0.95)  # (choice)
BLADE_COUNT_RANGE: Final = (40, 80)
BLADE_WIDTH: Final = 0.003
BLADE_HEIGHT: Final = 0.02
BLADE_TOP_MIN: Final = HORIZON + 0.005  # blades stand wholly in the ground (choice)

# ---- objects --------------------------------------------------------------------
SHAPES: Final = ("sphere", "cube", "pyramid", "star")
SIZES: Final = ("small", "large")
HALF_EXTENT: Final[dict[str, float]] = {"small": 0.07, "large": 0.12}
STAR_INNER_RATIO: Final = 0.45
COLOURS: Final = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
PALETTE: Final[dict[str, RGB]] = {
    "red": hex_rgb("#E53935"),
    "orange": hex_rgb("#FB8C00"),
    "yellow": hex_rgb("#FDD835"),
    "green": hex_rgb("#43A047"),
    "blue": hex_rgb("#1E88E5"),
    "purple": hex_rgb("#8E24AA"),
    "white": hex_rgb("#F5F5F5"),
    "black": hex_rgb("#1A1A1A"),
}
MATERIALS: Final = ("solid", "glass")
OUTLINE_WIDTH: Final = 0.006  # drawn inside the shape's edge (choice: inner stroke)
OUTLINE_DARKEN: Final = 0.30  # outline colour = (1 - 0.30) * fill
GLASS_ALPHA: Final = 0.55
GLASS_HIGHLIGHT_RADIUS: Final = 0.25  # fraction of the half-extent
HIGHLIGHT_COLOUR: Final = (255, 255, 255)
SPHERE_SHINE_RADIUS: Final = 0.35  # solid sphere highlight, fraction of the radius (choice)
SPHERE_SHINE_OFFSET: Final = 0.30  # up-left offset of its centre, fraction of the radius (choice)
SPHERE_SHINE_MIX: Final = 0.45  # shine colour = fill + 0.45 * (white - fill) (choice)
# Where the glass highlight sits, as (dx, dy) fractions of the half-extent: upper
# left, but inside the shape (choice; the highlight is also clipped to the shape).
GLASS_HIGHLIGHT_OFFSET: Final[dict[str, tuple[float, float]]] = {
    "sphere": (-0.40, -0.40),
    "cube": (-0.45, -0.45),
    "pyramid": (-0.20, 0.15),
    "star": (-0.12, -0.12),
}
GAP: Final = 0.02  # least gap between two objects (bounding squares, see sampling)
MARGIN: Final = 0.02  # least gap between an object and the canvas edge

# ---- groups, relations, clips ---------------------------------------------------
COUNTS: Final = (1, 2, 3)
RELATIONS: Final = ("above", "below", "left of", "right of")
RELATION_MIN_OFFSET: Final = 0.15
MOTIONS: Final = ("still", "falling", "rising", "moving left", "moving right")
MOTION_STEP: Final = 0.05  # canvas per frame
MOTION_VELOCITY: Final[dict[str, tuple[float, float]]] = {
    "still": (0.0, 0.0),
    "falling": (0.0, MOTION_STEP),
    "rising": (0.0, -MOTION_STEP),
    "moving left": (-MOTION_STEP, 0.0),
    "moving right": (MOTION_STEP, 0.0),
}
DEFAULT_FRAMES: Final = 8

# ---- captions -------------------------------------------------------------------
TRAIN_DROP_PROB: Final = 0.2  # each of size / material / ground / time words
