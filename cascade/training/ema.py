"""An exponential moving average of a model's weights, kept in float32 outside the DeepSpeed engine
(the engine would cast it to bf16 with the model)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EMA:
    """ema <- decay * ema + (1 - decay) * weights, for every floating-point parameter and buffer."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().float().clone() for name, value in module.state_dict().items() if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = module.state_dict()
        for name, shadow in self.shadow.items():
            shadow.lerp_(current[name].detach().float(), 1.0 - self.decay)

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (in its own dtype)."""
        module.load_state_dict(self.shadow, strict=False)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(path))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        loaded = load_file(str(path))
        if set(loaded) != set(self.shadow):
            raise ValueError(f"EMA file {path} does not match the model's parameters")
        for name, value in loaded.items():
            self.shadow[name].copy_(value)
