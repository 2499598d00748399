"""Temporal layers for the video variant of the U-Net: they mix the frames at each position.

Spatial layers see a clip as a batch of frames [B*F, C, H, W]; these layers reshape to one
sequence of F frames per (clip, position) and back. Both are residual with a zero-initialised
output, so a U-Net with temporal layers switched on computes exactly the image U-Net until trained
(Ho et al. 2022, "Video Diffusion Models"; Singer et al. 2022, "Make-A-Video", pseudo-3D layers).
Samples flagged as images (``video_mask`` False) pass through unchanged, which is how joint
image-video training puts independent images and clips in one batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.attention import attend
from stages.blocks import zero_module
from stages.group_norm import group_norm, group_norm_silu


def _apply_mask(x: torch.Tensor, delta: torch.Tensor, video_mask: torch.Tensor | None, frames: int) -> torch.Tensor:
    """x + delta for video samples, x for image samples; x, delta [B*F, C, H, W], video_mask [B] bool."""
    if video_mask is None:
        return x + delta
    keep = video_mask.to(delta.dtype).repeat_interleave(frames)[:, None, None, None]  # [B*F, 1, 1, 1]
    return x + delta * keep


class TemporalConv(nn.Module):
    """A kernel-3 convolution over frames at each position: [B*F, C, H, W] -> [B*F, C, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = zero_module(nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, frames: int, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        clip = group_norm_silu(self.norm, x).reshape(b, frames, c, h, w).transpose(1, 2)  # [B, C, F, H, W], a view
        # The kernel-3 Conv1d over frames, run as a (3, 1, 1) Conv3d: on channels-last input the clip
        # view is already channels-last-3d memory, so nothing is transposed or copied.
        weight = self.conv.weight[..., None, None]  # [C, C, 3, 1, 1]
        delta = F.conv3d(clip, weight, self.conv.bias, padding=(1, 0, 0))  # [B, C, F, H, W]
        delta = delta.transpose(1, 2).reshape(bf, c, h, w)
        return _apply_mask(x, delta, video_mask, frames)


class TemporalAttention(nn.Module):
    """Self-attention over the F frames at each position with a learned bias per head and frame
    distance (clipped at ``max_distance``, so longer clips reuse the largest learned offsets).

    [B*F, C, H, W] -> [B*F, C, H, W].
    """

    def __init__(self, channels: int, head_dim: int, max_distance: int = 16) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.max_distance = max_distance
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.relative_bias = nn.Embedding(2 * max_distance + 1, self.heads)
        nn.init.zeros_(self.relative_bias.weight)
        self.out = zero_module(nn.Linear(channels, channels))

    def position_bias(self, frames: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[heads, F, F] additive attention bias indexed by the clipped distance j - i."""
        index = torch.arange(frames, device=device)
        distance = (index[None, :] - index[:, None]).clamp(-self.max_distance, self.max_distance)
        return self.relative_bias(distance + self.max_distance).permute(2, 0, 1).to(dtype)

    def forward(self, x: torch.Tensor, frames: int, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        bf, c, h, w = x.shape
        b, heads, head_dim = bf // frames, self.heads, c // self.heads
        seq = self.norm(x).reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
        q, k, v = self.qkv(seq).reshape(b * h * w, frames, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(frames, x.device, q.dtype)[None]  # [1, heads, F, F]
        out = attend(q, k, v, bias)  # [B*H*W, heads, F, d]
        out = self.out(out.transpose(1, 2).reshape(b * h * w, frames, c))
        delta = out.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return _apply_mask(x, delta, video_mask, frames)
