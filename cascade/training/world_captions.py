"""Fresh captions for shapes-world training samples: caption augmentation for the CLIP and the prior.

A world shard holds one caption per scene (one phrasing, some words dropped). Over many epochs a
contrastive model can memorise that exact string; drawing, with some probability, a new caption
of the same scene (another phrasing, other dropped words) makes it learn the attributes instead.
The scene is rebuilt from the sample key (``{split}-{seed:09d}``, see
:mod:`data_pipeline.world_shards`); a key of another form keeps its shard caption.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_WORLD_KEY = re.compile(r"^(train|eval|heldout)-(\d{9})$")


class WorldRecaptioner:
    """``__call__(keys, captions, generator) -> captions``: each world caption is replaced by a fresh
    caption of its scene with probability ``prob`` (two draws per sample from ``generator``)."""

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

    def __call__(self, keys: list[str], captions: list[str], generator: torch.Generator) -> list[str]:
        if self.prob <= 0.0:
            return list(captions)
        from data_pipeline.world import caption

        draws = torch.rand(len(keys), generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (len(keys),), generator=generator).tolist()
        out = []
        for key, text, u, seed in zip(keys, captions, draws, seeds):
            scene = self.scene(key) if u < self.prob else None
            out.append(text if scene is None else caption(scene, seed=seed, drop_words=scene.split == "train"))
        return out
