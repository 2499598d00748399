"""Spatial attention of the U-Net: self-attention over positions, with conditioning tokens appended
to the keys and values (GLIDE, Nichol et al. 2022, section 2.2; Imagen, Saharia et al. 2022, appendix F).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.blocks import zero_module
from stages.group_norm import group_norm
from stages.fused import linear_add

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


class SpatialAttention(nn.Module):
    """x [N, C, H, W] attends to its own H*W positions and to ``context`` [N, L, D_ctx] -> [N, C, H, W].

    One fused QKV projection, one attention call (:func:`attend`) over [positions; context], the
    output projection and the residual add in one op where possible (:func:`~stages.fused.linear_add`);
    the output projection starts at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int, head_dim: int, context_dim: int | None) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"channels ({channels}) must be a multiple of head_dim ({head_dim})")
        self.heads = channels // head_dim
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.out = zero_module(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        heads, head_dim = self.heads, c // self.heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)  # [N, HW, C]
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
