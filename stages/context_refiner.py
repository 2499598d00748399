"""A small bidirectional transformer over a stage's text context, trained with the diffusion loss.

GLIDE (Nichol et al. 2022, section 2.2) trains its text transformer together with the diffusion
model. A frozen contrastive text encoder gives states shaped by what its image tower could see: the
world CLIP's causal text tower folds shape, count and relation words together, and its word
embeddings (``UNet.text_words``) know no context. A few layers on top, trained by the stage itself,
let each token's state carry what the stage needs to bind: "red" in "two red cubes left of a blue
sphere" can take on "cubes", "two" and "left of". Every layer's output projection starts at zero,
so a stage without the refiner computes the same network at first (``init_from`` a release).
"""

from __future__ import annotations

import torch
from torch import nn

from stages.attention import attend
from stages.blocks import zero_module


class RefinerLayer(nn.Module):
    """One pre-norm transformer layer: tokens [B, L, D] -> [B, L, D], the identity at first."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"context_dim ({dim}) must be a multiple of head_dim ({head_dim})")
        self.heads = dim // head_dim
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = zero_module(nn.Linear(dim, dim))
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), zero_module(nn.Linear(4 * dim, dim)))

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """tokens [B, L, D]; ``key_mask`` [B, 1, 1, L] boolean (False: padding, not attended) or None."""
        batch, length, dim = tokens.shape
        qkv = self.qkv(self.attention_norm(tokens)).reshape(batch, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, L, d]
        mixed = attend(q, k, v, key_mask).transpose(1, 2).reshape(batch, length, dim)  # [B, L, D]
        tokens = tokens + self.attention_out(mixed)
        return tokens + self.mlp(self.mlp_norm(tokens))


class ContextRefiner(nn.Module):
    """``layers`` bidirectional transformer layers over the text context: [B, L, D] -> [B, L, D].

    ``mask`` [B, L] (True: a real token) keeps padding out of every token's attention; each row must
    hold at least one real token (the start token always is). Padding positions come out changed,
    but nothing downstream attends to them.
    """

    def __init__(self, dim: int, layers: int, head_dim: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a context refiner needs at least one layer (got {layers})")
        self.layers = nn.ModuleList(RefinerLayer(dim, head_dim) for _ in range(layers))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        key_mask = None
        if mask is not None and not bool(mask.all()):
            key_mask = mask[:, None, None, :]  # [B, 1, 1, L]
        for layer in self.layers:
            tokens = layer(tokens, key_mask)
        return tokens
