"""The shapes world: the project's synthetic captioned scenes, clips and benchmark
(design/WORLD.md), and a reader that checks what a picture shows.

>>> from data_pipeline.world import sample_scene, render_image, caption, read_image, score_reading
>>> scene = sample_scene("eval", 7)
>>> image = render_image(scene, 64)            # uint8 [64, 64, 3]
>>> text = caption(scene, style="compact")
>>> score_reading(read_image(image), scene)["all"]
True

Decisions where WORLD.md is silent (numbers in :mod:`.constants`, marked "choice"):

- Layout: objects' bounding squares keep a 0.02 gap from each other and from the
  canvas edge, and a 0.02 gap from the sun disk, in every frame (this implies the
  contract's centre-distance rule and also keeps cubes' corners apart). A relation
  holds in every frame with offset >= 0.15 along its axis and that offset larger
  than the offset across it. Two groups never share both colour and shape.
- Ground ``none``: the sky gradient is stretched to reach the horizon colour at the
  bottom; stars may be anywhere in the sky; the sun still shows only above y = 0.62.
- Shapes: the star has one point straight up; the pyramid's base is at the bottom of
  its square. Solid outline is an inner stroke. Solid spheres get a shine disk
  (radius 0.35 r, centre offset 0.30 r up-left, colour fill + 0.45 (white - fill));
  the glass highlight sits up-left inside each shape and is clipped to it.
- Dunes are sine curves like the waves (amplitude 0.01-0.03, 0.5-1.5 cycles);
  waves have 1.5-4 cycles per width.
- Clips: a group's motion is drawn from the motions whose path fits the canvas
  (for F > 17 frames, only "still"); in a clip caption a still group says
  "standing still"; image captions carry no motion word.
- Captions: six styles; every eval caption names count, size, colour, material
  (glass only, except the "picture" style which also says "solid"), shape, motion
  (clips), relation, ground and time. "into the ocean" may replace "over the
  ocean" when something falls.
- Sizes below 16 px, unknown names and bad seeds raise ``cascade.errors.UserError``.
"""

from .caption_parse import ParsedCaption, ParsedGroup, parse_caption
from .captions import CAPTION_STYLES, caption
from .layout import layout_problems
from .reader import GroupReading, Reading, read_clip, read_image
from .reader_objects import ObjectReading
from .render import render_clip, render_image
from .sampling import HELDOUT_RULES, heldout_combinations, is_heldout, sample_scene
from .scene import SPLITS, Background, Dune, Group, Scene, Wave
from .score import ATTRIBUTES, score_reading

__all__ = [
    "ATTRIBUTES",
    "CAPTION_STYLES",
    "HELDOUT_RULES",
    "SPLITS",
    "Background",
    "Dune",
    "Group",
    "GroupReading",
    "ObjectReading",
    "ParsedCaption",
    "ParsedGroup",
    "Reading",
    "Scene",
    "Wave",
    "caption",
    "heldout_combinations",
    "is_heldout",
    "layout_problems",
    "parse_caption",
    "read_clip",
    "read_image",
    "render_clip",
    "render_image",
    "sample_scene",
    "score_reading",
]
