"""Residual blocks and resampling layers of the U-Net (4-D tensors [N, C, H, W])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# PyTorch's CPU GroupNorm kernel for channels-last input with fewer than this many positions
# parallelises over (sample, group) and walks each group's few channels position by position:
# at 16x16 and 8x8 it ran 5-10x slower per element than at 64x64 here. Its channels-last backward
# is slow at every size (91 ms against 12 ms a call for a 32-channel 64x64 bf16 batch of 32: half
# of a super-resolution training step). Such inputs are normalised in NCHW order instead (one
# transposing copy, then the contiguous kernel).
_SMALL_CHANNELS_LAST = 1024


def _needs_nchw(x: torch.Tensor) -> bool:
    return (
        x.ndim == 4
        and (x.shape[2] * x.shape[3] < _SMALL_CHANNELS_LAST or (torch.is_grad_enabled() and x.requires_grad))
        and x.shape[1] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and results) that avoids the slow channels-last CPU path on
    small feature maps; the output keeps the input's memory format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_nchw(x):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return GroupNorm(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the conditioning embedding as a scale and shift of the second
    norm ("adaptive group norm": Nichol & Dhariwal 2021, section 3; Dhariwal & Nichol 2021, eq. in 4).

    x [N, C_in, H, W], emb [N, E] -> [N, C_out, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        no_grad = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=no_grad))  # [N, C_out, H, W]
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)  # [N, C_out] each
        h = modulated_group_norm(h, self.norm2, scale, shift)  # norm2(h) * (1 + scale) + shift
        h = F.silu(h, inplace=no_grad)
        if self.dropout.p > 0:
            h = self.dropout(h)
        h = self.conv2(h)
        skip = self.skip(x)
        return h.add_(skip) if no_grad and skip.dtype == h.dtype else skip + h


def modulated_group_norm(x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` for x [N, C, H, W] and scale, shift [N, C], in two passes over x.

    The norm's affine parameters fold into the per-sample scale and shift, so after the
    normalisation one ``addcmul`` does the rest: (n * g + b)(1 + s) + t = n * g(1 + s) + (b(1 + s) + t).
    """
    gain, shift = 1 + scale.float(), shift.float()  # [N, C], folded in float32 (they are small)
    if norm.affine:
        shift = torch.addcmul(shift, norm.bias.float(), gain)  # b (1 + s) + t
        gain = gain * norm.weight.float()  # g (1 + s)
    nchw = _needs_nchw(x)
    normed = F.group_norm(x.contiguous() if nchw else x, norm.num_groups, None, None, norm.eps)  # [N, C, H, W]
    gain, shift = gain.to(normed.dtype)[:, :, None, None], shift.to(normed.dtype)[:, :, None, None]
    if not nchw:
        return torch.addcmul(shift, normed, gain)
    if torch.is_grad_enabled():
        return torch.addcmul(shift, normed, gain).contiguous(memory_format=torch.channels_last)
    return torch.addcmul(shift, normed, gain, out=torch.empty_like(x))  # back to channels-last in the same pass


class Downsample(nn.Module):
    """[N, C, H, W] -> [N, C_out, H/2, W/2] by a strided 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """[N, C, H, W] -> [N, C_out, 2H, 2W]: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
