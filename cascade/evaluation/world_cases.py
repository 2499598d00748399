"""Evaluation material from the shapes world: scenes, renders, captions and one-attribute variants.

Zero-shot classification of an attribute (Radford et al. 2021, Sec. 3.1.2) compares an image with
captions that differ only in that attribute: for a scene and, say, ``colour``, the candidates are
the scene's compact caption with the colour of one group set to each of the eight colours, all
other words (and synonyms) unchanged. The attribute values are those of design/WORLD.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cascade.training.world_captions import ATTRIBUTE_VALUES, with_attribute

ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_VALUES)
OBJECT_ATTRIBUTES = ("colour", "shape", "size", "material")
ZERO_SHOT_STYLE = "compact"


@dataclass(frozen=True)
class ZeroShotCase:
    """One image's zero-shot question: ``captions`` (one per value of ``attribute``), ``answer`` the index
    of the true one."""

    index: int
    attribute: str
    captions: tuple[str, ...]
    answer: int


def world_scenes(split: str, count: int, start: int = 0) -> list[Any]:
    """Scenes ``start .. start + count - 1`` of a world split (still images)."""
    from data_pipeline.world import sample_scene

    return [sample_scene(split, seed) for seed in range(start, start + count)]


def render_scenes(scenes: list[Any], size: int) -> torch.Tensor:
    """Images [N, 3, size, size] in [-1, 1], as the training loader gives them."""
    from data_pipeline.world import render_image

    pixels = np.stack([render_image(scene, size) for scene in scenes])  # [N, H, W, 3] uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def scene_captions(scenes: list[Any], style: str | None = None) -> list[str]:
    """One full caption per scene (no dropped words), in ``style`` or a style drawn per scene."""
    from data_pipeline.world import caption

    return [caption(scene, style=style, seed=scene.seed or 0) for scene in scenes]


def attribute_value(scene: Any, attribute: str, group: int = 0) -> Any:
    """The scene's value of ``attribute`` (of ``groups[group]`` for object attributes)."""
    if attribute in ("ground", "time", "relation"):
        return getattr(scene, attribute)
    return getattr(scene.groups[group], attribute)


def applies(scene: Any, attribute: str) -> bool:
    """Count is asked of one-group scenes only (two groups always have count 1), relation of two-group scenes."""
    if attribute == "count":
        return len(scene.groups) == 1
    if attribute == "relation":
        return len(scene.groups) == 2
    return True


def zero_shot_cases(scenes: list[Any], attribute: str) -> list[ZeroShotCase]:
    """The zero-shot questions about ``attribute`` for each scene it applies to.

    For two-group scenes an object attribute is asked of group ``seed % 2``.
    """
    from data_pipeline.world import caption

    if attribute not in ATTRIBUTE_VALUES:
        raise ValueError(f"unknown attribute {attribute!r} (choose from {', '.join(ATTRIBUTES)})")
    cases = []
    for index, scene in enumerate(scenes):
        if not applies(scene, attribute):
            continue
        group = (scene.seed or 0) % len(scene.groups) if attribute in OBJECT_ATTRIBUTES else 0
        values = ATTRIBUTE_VALUES[attribute]
        captions = tuple(caption(with_attribute(scene, attribute, v, group), style=ZERO_SHOT_STYLE, seed=scene.seed or 0)
                         for v in values)
        if len(set(captions)) != len(captions):
            raise AssertionError(f"captions for {attribute} of scene {scene.seed} are not all different: {captions}")
        cases.append(ZeroShotCase(index, attribute, captions, values.index(attribute_value(scene, attribute, group))))
    return cases
