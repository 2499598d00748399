"""Spatial attention of the U-Net: self-attention over positions, with conditioning tokens appended
to the keys and values (GLIDE, Nichol et al. 2022, section 2.2; Imagen, Saharia et al. 2022, appendix F).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.blocks import group_norm, zero_module


class SpatialAttention(nn.Module):
    """x [N, C, H, W] attends to its own H*W positions and to ``context`` [N, L, D_ctx] -> [N, C, H, W].

    One fused QKV projection, one ``scaled_dot_product_attention`` call over [positions; context];
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
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, heads, HW, d]
        out = self.out(out.transpose(1, 2).reshape(n, h * w, c))  # [N, HW, C]
        out = out.reshape(n, h, w, c).permute(0, 3, 1, 2)  # [N, C, H, W], channels-last memory
        if not torch.is_grad_enabled() and out.dtype == x.dtype:
            return out.add_(x)  # no new [N, C, H, W] buffer when nothing needs gradients
        return x + out
