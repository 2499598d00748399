"""Embeddings of noise levels and of the conditioning vectors that the U-Net adds to them."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style features of scalar times (Vaswani et al. 2017; Ho et al. 2020, appendix B).

    :param t: [B] times, float (fractional times are fine), typically in [0, 1000).
    :returns: [B, dim] float32: cos and sin of t at geometrically spaced frequencies.
    """
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]  # [B, half]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


class TimeEmbedding(nn.Module):
    """t [B] -> [B, embed_dim]: sinusoidal features through a two-layer MLP."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(feature_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(t, self.feature_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(features)  # [B, embed_dim]


class NullableProjection(nn.Module):
    """A conditioning vector [B, in_dim] -> [B, out_dim], or a learned "no condition" vector where dropped.

    Dropping the condition for a fraction of training samples, with a learned null in its place,
    is what makes classifier-free guidance possible (Ho & Salimans 2022).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.null = nn.Parameter(torch.zeros(out_dim))

    def forward(self, value: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        out = self.proj(self.norm(value))  # [B, out_dim]
        if drop is None:
            return out
        return torch.where(drop[:, None], self.null.to(out.dtype).expand_as(out), out)
