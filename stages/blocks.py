"""Residual blocks and resampling layers of the U-Net (4-D tensors [N, C, H, W])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.fused import Conv2d, concat_conv_fusable, conv_add, conv_of_concat
from stages.group_norm import concat_free, group_norm, group_norm_silu, modulated_group_norm
from stages.upsample_conv import upsample_conv


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the conditioning embedding as a scale and shift of the second
    norm ("adaptive group norm": Nichol & Dhariwal 2021, section 3; Dhariwal & Nichol 2021, eq. in 4).

    x [N, C_in, H, W], emb [N, E] -> [N, C_out, H, W]; or x [N, C_x, H, W] and extra
    [N, C_in - C_x, H, W], read as their concatenation along channels (see :meth:`forward`).
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, extra: torch.Tensor | None = None,
                modulation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``extra`` [N, C_extra, H, W]: the block's input is x and extra concatenated along channels
        (C_in = C_x + C_extra; the U-Net's skip connections). In inference on the CPU the
        concatenation is never built: the first norm reads both, the skip projection convolves each.
        ``modulation``: :meth:`modulation` of emb when already computed (the U-Net computes every
        block's at once in inference, :mod:`stages.modulations`)."""
        if extra is not None and not self._concat_free(x, extra):
            x, extra = torch.cat([x, extra], dim=1), None
        h = self.conv1(group_norm_silu(self.norm1, x, extra))  # [N, C_out, H, W]
        scale, shift = modulation if modulation is not None else self.modulation(emb)  # [N, C_out] each
        h = modulated_group_norm(h, self.norm2, scale, shift, silu=True)  # silu(norm2(h) * (1 + scale) + shift)
        if self.dropout.p > 0:
            h = self.dropout(h)
        skip = self.skip(x) if extra is None else conv_of_concat(self.skip, x, extra)
        return conv_add(self.conv2, h, skip, overwrite_residual=not isinstance(self.skip, nn.Identity))  # conv2(h) + skip

    def modulation(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) [N, C_out] each of the second norm, from the embedding emb [N, E]."""
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)
        return scale, shift

    def _concat_free(self, x: torch.Tensor, extra: torch.Tensor) -> bool:
        return isinstance(self.skip, nn.Conv2d) and concat_free(x, extra) and concat_conv_fusable(self.skip, x, extra)


class Downsample(nn.Module):
    """[N, C, H, W] -> [N, C_out, H/2, W/2] by a strided 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """[N, C, H, W] -> [N, C_out, 2H, 2W]: nearest-neighbour upsampling, then a 3x3 convolution (in CPU
    inference one 2x2 convolution at the low resolution, :func:`~stages.upsample_conv.upsample_conv`)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(self.conv, x)  # conv(interpolate(x, scale_factor=2, mode="nearest"))
