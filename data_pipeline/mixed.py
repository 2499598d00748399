"""Joint image-video training: batches drawn from a clip loader and an image loader.

Batch n is an image batch when a hash of (seed, n) falls below ``image_fraction``; the choice
depends on the batch counter only, so a resumed run makes the same choices (Ho et al. 2022,
"Video Diffusion Models", section 4: training on images and videos together).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from data_pipeline.shards import SkipStats


def _uniform(seed: int, n: int) -> float:
    digest = hashlib.sha256(f"{seed}:{n}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class MixedLoader:
    """Forever alternating between two :class:`~data_pipeline.loader.ShardLoader`s (each restarted
    on its next epoch when it runs out). Exposes what the training loop needs of a loader."""

    def __init__(self, clips: Any, images: Any, image_fraction: float, seed: int) -> None:
        if not 0.0 <= image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be between 0 and 1, got {image_fraction}")
        self.loaders = {"clips": clips, "images": images}
        self.image_fraction, self.seed = image_fraction, seed
        self.count = 0
        self._iterators: dict[str, Iterator[dict[str, Any]]] = {}

    @property
    def stats(self) -> SkipStats:
        return SkipStats().merge(self.loaders["clips"].stats).merge(self.loaders["images"].stats)

    def _next(self, name: str) -> dict[str, Any]:
        loader = self.loaders[name]
        for _ in range(2):
            if name not in self._iterators:
                self._iterators[name] = iter(loader)
            try:
                return next(self._iterators[name])
            except StopIteration:
                del self._iterators[name]
                loader.set_epoch(loader.position.epoch)
        raise RuntimeError(f"the {name} shards yielded no usable sample")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            name = "images" if _uniform(self.seed, self.count) < self.image_fraction else "clips"
            batch = self._next(name)
            self.count += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, **{name: loader.state_dict() for name, loader in self.loaders.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state["count"])
        for name, loader in self.loaders.items():
            loader.load_state_dict(state[name])
        self._iterators.clear()
