"""An exponential moving average of a model's weights, kept in float32 outside the DeepSpeed engine
(the engine would cast it to bf16 with the model)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def warmed_up_decay(decay: float, step: int) -> float:
    """The decay used at optimizer step ``step`` (1-based): min(decay, (1 + step) / (10 + step)).

    Early on the average follows the weights closely; a fixed 0.999 would still hold
    0.999^1000 = 37% of the random initial weights after 1000 steps. Over steps a..b the warm-up
    keeps about ((10 + a) / (10 + b))^9 of what the average held at step a.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """ema <- d * ema + (1 - d) * weights, for every floating-point parameter and buffer, with the
    decay d warmed up by :func:`warmed_up_decay`."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().float().clone() for name, value in module.state_dict().items() if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Average in the weights after optimizer step ``step`` (1-based)."""
        weight = 1.0 - warmed_up_decay(self.decay, step)
        current = module.state_dict()
        for name, shadow in self.shadow.items():
            shadow.lerp_(current[name].detach().float(), weight)

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (in its own dtype)."""
        module.load_state_dict(self.shadow, strict=False)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}, str(path))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        loaded = load_file(str(path))
        if set(loaded) != set(self.shadow):
            raise ValueError(f"EMA file {path} does not match the model's parameters")
        for name, value in loaded.items():
            self.shadow[name].copy_(value)
