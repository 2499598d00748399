"""Gaussian noise from explicit generators: one for the batch, or one per sample.

With one generator per sample, each sample's noise depends on its own seed only, so a sample
comes out the same whether it is drawn alone or inside a batch (batch generation jobs rely on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` [B, ...]; a sequence of B generators draws sample by sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]).to(device)
