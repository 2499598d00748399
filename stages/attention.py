"""Spatial attention of the U-Net: self-attention over positions, with conditioning tokens appended
to the keys and values (GLIDE, Nichol et al. 2022, section 2.2; Imagen, Saharia et al. 2022, appendix F).

Optionally each position's token also carries where it is (:func:`position_features`, as ViT and
DiT give their patches): without it, attention is blind to place but for what zero padding leaks
into the convolutions' features, and "left of" or "above" has nothing to attach to.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from stages.blocks import zero_module
from stages.group_norm import group_norm
from stages.fused import linear_add

# Frequencies (times pi) of the sine and cosine features of a position's normalised coordinates.
POSITION_FREQUENCIES = (1, 2, 4, 8, 16, 32)
POSITION_FEATURES = 4 * len(POSITION_FREQUENCIES)
# The features' scale as the projection reads them. Adam moves each weight by about the learning rate a
# step, whatever its gradient's size, so a zero-initialised projection's output grows with the scale of
# its input: from features of unit size it reached 0.01 per weight after 250 steps at lr 2e-4, a
# hundredth of the tokens' unit scale; ten times larger, it gets there ten times sooner.
POSITION_GAIN = 10.0

# Query-key pairs per head up to which a CPU attention that needs gradients runs as plain matmuls.
_SMALL_ATTENTION = 16384


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for q [..., Lq, d], k and v [..., Lk, d] -> [..., Lq, d].

    ``mask``: boolean (False: not attended) or additive, broadcastable to [..., Lq, Lk].
    ``scaled_dot_product_attention`` everywhere but in one case: on the CPU, with gradients, for
    small problems (at most 16,384 query-key pairs per head), PyTorch's flash-attention backward is
    slow, and plain matmuls with float32 scores and softmax (what the flash kernel computes in)
    are faster: 3.3 against 13 ms forward and backward for a bf16 batch of 16 with 8 heads, 64
    queries and 96 keys on the 2-core CPU.
    """
    small = q.shape[-2] * k.shape[-2] <= _SMALL_ATTENTION
    if not (q.device.type == "cpu" and small and torch.is_grad_enabled() and q.requires_grad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", enabled=False):
        scores = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)  # [..., Lq, Lk]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return scores.softmax(-1).to(v.dtype) @ v


@lru_cache(maxsize=32)
def position_features(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Where each of H*W positions is -> [H*W, POSITION_FEATURES] float32, row-major like the tokens.
    Made once per size and device (every attention block of every step asks again): read, never modify.

    sin and cos of f*pi*u for each frequency f, u the centre of a cell in [0, 1] (down then across),
    so the features mean the same place at every resolution: at 8, 16 or 64 px, at the base's size
    or any other. cos(pi*u) alone already tells left from right and top from bottom.
    """
    freqs = torch.tensor(POSITION_FREQUENCIES, dtype=torch.float32, device=device) * torch.pi  # [K]
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height  # [H]
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width  # [W]
    y = (rows[:, None] * freqs).repeat_interleave(width, dim=0)  # [H*W, K]
    x = (cols[:, None] * freqs).repeat(height, 1)  # [H*W, K]
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


class SpatialAttention(nn.Module):
    """x [N, C, H, W] attends to its own H*W positions and to ``context`` [N, L, D_ctx] -> [N, C, H, W].

    One fused QKV projection, one attention call (:func:`attend`) over [positions; context], the
    output projection and the residual add in one op where possible (:func:`~stages.fused.linear_add`);
    the output projection starts at zero, so the block starts as the identity.

    ``positions``: add each position's :func:`position_features` to its token before the QKV
    projection, through a zero-initialised projection (a block trained without it computes the same at first).
    """

    def __init__(self, channels: int, head_dim: int, context_dim: int | None, positions: bool = False) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"channels ({channels}) must be a multiple of head_dim ({head_dim})")
        self.heads = channels // head_dim
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.out = zero_module(nn.Linear(channels, channels))
        self.positions = zero_module(nn.Linear(POSITION_FEATURES, channels)) if positions else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        heads, head_dim = self.heads, c // self.heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)  # [N, HW, C]
        if self.positions is not None:
            features = POSITION_GAIN * position_features(h, w, x.device)  # [HW, F]
            where = self.positions(features.to(self.positions.weight.dtype))  # [HW, C]
            tokens = tokens + where.to(tokens.dtype)
        q, k, v = self.qkv(tokens).reshape(n, h * w, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # [N, heads, HW, d]
        mask = None
        if context is not None and self.context_kv is not None:
            length = context.shape[1]
            kc, vc = self.context_kv(context).reshape(n, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
            k = torch.cat([k, kc], dim=2)  # [N, heads, HW + L, d]
            v = torch.cat([v, vc], dim=2)
            if context_mask is not None and not bool(context_mask.all()):
                own = torch.ones(n, h * w, dtype=torch.bool, device=x.device)
                mask = torch.cat([own, context_mask], dim=1)[:, None, None, :]  # [N, 1, 1, HW + L]
        out = attend(q, k, v, mask)  # [N, heads, HW, d]
        out = out.transpose(1, 2).reshape(n, h * w, c)  # [N, HW, C]
        if x.is_contiguous(memory_format=torch.channels_last):  # x as [N, HW, C] is a view: one fused add
            out = linear_add(self.out, out, x.permute(0, 2, 3, 1).reshape(n, h * w, c))  # out(attention) + x
            return out.reshape(n, h, w, c).permute(0, 3, 1, 2)  # [N, C, H, W], channels-last memory
        return x + self.out(out).reshape(n, h, w, c).permute(0, 3, 1, 2)
