"""Fresh captions and hard-negative captions for shapes-world training samples (CLIP and prior).

- Caption augmentation: a world shard holds one caption per scene (one phrasing, some words
  dropped). Over many epochs a contrastive model can memorise that exact string; drawing, with
  some probability, a new caption of the same scene (another phrasing, other dropped words) makes
  it learn the attributes instead.
- Hard negatives (NegCLIP, Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave
  like Bags-of-Words", Sec. 4): a caption of the same scene with one attribute changed (a colour,
  shape, size, material, count or relation) or with the colours or shapes of its two groups
  swapped, in the same phrasing and with the same dropped words as the positive caption, so the
  two differ only in that attribute. In-batch negatives rarely differ in one attribute only.

The scene is rebuilt from the sample key (``{split}-{seed:09d}``, see
:mod:`data_pipeline.world_shards`, which captions scene ``s`` with caption seed ``s``); a key of
another form keeps its shard caption and gets no negative. All draws come from the generator.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import torch

_WORLD_KEY = re.compile(r"^(train|eval|heldout)-(\d{9})$")
#: The values of each attribute (design/WORLD.md).
ATTRIBUTE_VALUES: dict[str, tuple[Any, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "white", "black"),
    "shape": ("sphere", "cube", "pyramid", "star"),
    "size": ("small", "large"),
    "material": ("solid", "glass"),
    "count": (1, 2, 3),
    "relation": ("above", "below", "left of", "right of"),
    "ground": ("ocean", "desert", "grass", "none"),
    "time": ("day", "sunset", "night"),
}
SCENE_ATTRIBUTES = ("ground", "time", "relation")
#: What a hard negative changes (the background is never confused, so it is not among them).
NEGATIVE_KINDS = ("colour", "shape", "size", "material", "count", "relation", "swap")


def with_attribute(scene: Any, attribute: str, value: Any, group: int = 0) -> Any:
    """``scene`` with ``attribute`` set to ``value`` (of ``groups[group]`` for object attributes)."""
    if attribute in SCENE_ATTRIBUTES:
        return replace(scene, **{attribute: value})
    groups = list(scene.groups)
    g = groups[group]
    if attribute == "count":
        groups[group] = replace(g, count=value, positions=(g.positions[0],) * value)
    else:
        groups[group] = replace(g, **{attribute: value})
    return replace(scene, groups=tuple(groups))


def negative_scene(scene: Any, rng: np.random.Generator) -> Any | None:
    """A scene that differs from ``scene`` in one attribute (or a swap between its groups), or None."""
    two = len(scene.groups) == 2
    kinds = [k for k in NEGATIVE_KINDS if (k != "count" or not two) and (k not in ("relation", "swap") or two)]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "swap":
        a, b = scene.groups
        attribute = "colour" if a.colour != b.colour else "shape"
        if getattr(a, attribute) == getattr(b, attribute):
            return None
        swapped = with_attribute(scene, attribute, getattr(b, attribute), 0)
        return with_attribute(swapped, attribute, getattr(a, attribute), 1)
    group = int(rng.integers(len(scene.groups))) if kind not in SCENE_ATTRIBUTES else 0
    current = getattr(scene, kind) if kind in SCENE_ATTRIBUTES else getattr(scene.groups[group], kind)
    others = [v for v in ATTRIBUTE_VALUES[kind] if v != current]
    return with_attribute(scene, kind, others[int(rng.integers(len(others)))], group)


class WorldRecaptioner:
    """Caption augmentation and hard negatives for world samples (see the module docstring).

    ``prob``: the probability that a sample's caption is replaced by a fresh one.
    """

    def __init__(self, prob: float, max_scenes: int = 200_000) -> None:
        self.prob = prob
        self.max_scenes = max_scenes
        self._scenes: dict[str, Any] = {}

    def scene(self, key: str) -> Any | None:
        match = _WORLD_KEY.match(key)
        if match is None:
            return None
        if key not in self._scenes:
            from data_pipeline.world import sample_scene

            if len(self._scenes) >= self.max_scenes:
                self._scenes.clear()
            self._scenes[key] = sample_scene(match.group(1), int(match.group(2)))
        return self._scenes[key]

    def _draw(self, keys: list[str], captions: list[str], generator: torch.Generator
              ) -> tuple[list[str], list[tuple[Any, int] | None]]:
        """Captions, and per sample the (scene, caption seed) its caption was made with (None if unknown)."""
        from data_pipeline.world import caption

        draws = torch.rand(len(keys), generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (len(keys),), generator=generator).tolist()
        out, made = [], []
        for key, text, u, seed in zip(keys, captions, draws, seeds):
            scene = self.scene(key)
            if scene is not None and u < self.prob:
                out.append(caption(scene, seed=seed, drop_words=scene.split == "train"))
                made.append((scene, seed))
            else:
                out.append(text)
                made.append((scene, int(scene.seed)) if scene is not None else None)  # the shard's own caption
        return out, made

    def __call__(self, keys: list[str], captions: list[str], generator: torch.Generator) -> list[str]:
        if self.prob <= 0.0:
            return list(captions)
        return self._draw(keys, captions, generator)[0]

    def with_negatives(self, keys: list[str], captions: list[str], generator: torch.Generator
                       ) -> tuple[list[str], list[str | None]]:
        """(captions, hard negatives): a negative is None where none can be made (not a world key,
        or the changed word is one the caption dropped)."""
        from data_pipeline.world import caption

        out, made = self._draw(keys, captions, generator)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        negatives: list[str | None] = []
        for text, origin in zip(out, made):
            negative = None
            if origin is not None:
                scene, seed = origin
                changed = negative_scene(scene, rng)
                if changed is not None:
                    candidate = caption(changed, seed=seed, drop_words=scene.split == "train")
                    negative = candidate if candidate != text else None
            negatives.append(negative)
        return out, negatives
