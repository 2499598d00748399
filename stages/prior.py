"""The diffusion prior of unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation
with CLIP Latents", Sec. 2.2): p(z_i | y), a CLIP image embedding given a caption.

The network is a transformer over the sequence

    [text tokens (L, projected), pooled text embedding, timestep embedding, noised image embedding z_t, query]

whose output at the learned query predicts the clean embedding z_0 directly (x0-prediction with a
mean-squared error, as DALL-E 2 found better than eps). Text is dropped (replaced by learned
null embeddings) 10% of the time in training, which makes classifier-free guidance possible.
Attention is bidirectional with the text padding masked out (DALL-E 2 uses a causal mask; with
the output read at the last position a causal mask only restricts the earlier positions).

Embedding space: a CLIP embedding e [B, E] is diffused as ``z = sqrt(E) * e / |e|`` (the unit
vector scaled so that its mean square per dimension is 1, the scale the noise has);
:meth:`PriorStage.to_diffusion` and :meth:`PriorStage.from_diffusion` convert, and sampling returns
unit vectors again. The pooled text embedding is fed in the same scaled-unit form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cascade.diffusion.forward import q_sample
from cascade.diffusion.losses import simple_loss
from cascade.diffusion.schedules import NoiseSchedule, build_schedule
from cascade.diffusion.timing import network_time, uniform_times
from cascade.errors import UserError
from cascade.sampling.denoiser import Denoiser
from cascade.stage import ScheduleConfig, conditioned_denoiser
from stages.clip_world import math_attention_on_cpu
from stages.conditioning import Conditioning
from stages.embeddings import NullableProjection, TimeEmbedding

#: Positions after the text tokens: pooled text, time, noised embedding, query.
EXTRA_TOKENS = 4


@dataclass(frozen=True)
class PriorConfig:
    """The prior's network and diffusion settings.

    ``embed_dim`` (E) is the CLIP embedding width, ``text_dim`` the width of the CLIP text tower's
    per-token states and ``text_length`` the most text tokens (the CLIP context length); the
    training task checks them against the CLIP it reads. ``recaption_prob`` is a training option:
    the probability that a shapes-world caption is replaced by a fresh caption of its scene.
    """

    embed_dim: int = 192
    text_dim: int = 192
    text_length: int = 40
    width: int = 256
    layers: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Literal["eps", "x0", "v"] = "x0"
    text_drop_prob: float = 0.1
    recaption_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if min(self.embed_dim, self.text_dim, self.text_length, self.layers) < 1:
            raise ValueError("embed_dim, text_dim, text_length and layers must be >= 1")
        for name in ("text_drop_prob", "recaption_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")


class Block(nn.Module):
    """A pre-norm transformer block: masked self-attention (SDPA) and an MLP, each residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, S, W]; mask [B, S] bool (True = a key that may be attended to)."""
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [B, H, S, W/H]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, w))  # [B, S, W]
        return x + self.mlp(self.norm2(x))  # [B, S, W]


class PriorNetwork(nn.Module):
    """(z_t [B, E], t [B] in [0, 1000), text conditioning) -> the prediction [B, E] (z_0 for x0-prediction)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.text_in = nn.Sequential(nn.LayerNorm(c.text_dim), nn.Linear(c.text_dim, c.width))
        self.null_text = nn.Parameter(torch.zeros(c.width))  # the one token that stands for "no caption"
        self.pooled_in = NullableProjection(c.embed_dim, c.width)
        self.time_in = TimeEmbedding(c.width, c.width)
        self.x_in = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.position = nn.Parameter(torch.randn(c.text_length + EXTRA_TOKENS, c.width) * 0.02)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.norm_out = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _text(self, cond: Conditioning, batch: int, dtype: torch.dtype, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected text tokens [B, L, W], their mask [B, L] and the drop flags [B] (null text where True)."""
        drop = cond.drop_text
        if cond.text_tokens is None:  # no caption at all: every sample takes the null text
            drop = torch.ones(batch, dtype=torch.bool, device=device)
            return self.null_text.to(dtype).expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=device), drop
        length = cond.text_tokens.shape[1]
        if length > self.config.text_length:
            raise UserError(f"the prior takes at most {self.config.text_length} text tokens, got {length}")
        tokens = self.text_in(cond.text_tokens.to(dtype))  # [B, L, W]
        mask = cond.text_mask if cond.text_mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        if drop is None:
            return tokens, mask, torch.zeros(batch, dtype=torch.bool, device=device)
        first = torch.arange(length, device=device)[None, :] == 0  # [1, L]
        null = self.null_text.to(dtype).expand_as(tokens)  # [B, L, W]
        tokens = torch.where(drop[:, None, None], null, tokens)  # [B, L, W]
        mask = torch.where(drop[:, None], first, mask)  # [B, L]: only the null token remains
        return tokens, mask, drop

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        c = self.config
        batch, dtype, device = x_t.shape[0], x_t.dtype, x_t.device
        tokens, mask, drop = self._text(cond, batch, dtype, device)  # [B, L, W], [B, L], [B]
        length = tokens.shape[1]
        if cond.pooled is not None:
            pooled = F.normalize(cond.pooled.float(), dim=-1) * math.sqrt(c.embed_dim)  # [B, E], scaled unit
        else:
            pooled = torch.zeros(batch, c.embed_dim, device=device)
        pooled = self.pooled_in(pooled.to(dtype), drop)  # [B, W], learned null where dropped
        extra = torch.stack([pooled, self.time_in(t).to(dtype), self.x_in(x_t),
                             self.query.to(dtype).expand(batch, -1)], dim=1)  # [B, 4, W]
        position = torch.cat([self.position[:length], self.position[c.text_length:]]).to(dtype)  # [L + 4, W]
        h = torch.cat([tokens, extra], dim=1) + position  # [B, L + 4, W]
        full_mask = torch.cat([mask, torch.ones(batch, EXTRA_TOKENS, dtype=torch.bool, device=device)], dim=1)
        with math_attention_on_cpu(device):
            for block in self.blocks:
                h = block(h, full_mask)  # [B, L + 4, W]
        return self.out(self.norm_out(h[:, -1]))  # [B, E], read at the query


class PriorStage(nn.Module):
    """The prior as a stage: ``forward(image_embed, cond, generator) -> loss [B]`` and ``denoiser(cond, guidance)``.

    ``cond`` carries the caption's CLIP text states (``text_tokens`` [B, L, D], ``text_mask``) and
    its pooled CLIP text embedding (``pooled`` [B, E]).
    """

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.network = PriorNetwork(config)
        self.schedule: NoiseSchedule = build_schedule(config.schedule.name, config.schedule.num_steps)

    # ------------------------------------------------------------------ embedding space

    @property
    def scale(self) -> float:
        """sqrt(E): a unit vector times this has mean square 1 per dimension."""
        return math.sqrt(self.config.embed_dim)

    def to_diffusion(self, embed: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings [B, E] (any norm) -> the diffused variable sqrt(E) * e / |e| [B, E], same dtype."""
        return (F.normalize(embed.float(), dim=-1) * self.scale).to(embed.dtype)

    def from_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_diffusion` up to the norm: z / sqrt(E), renormalised to unit vectors [B, E]."""
        return F.normalize(z.float() / self.scale, dim=-1)

    # ------------------------------------------------------------------ time

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Schedule times [B] (float64) -> the network's time input [B] float32 in [0, 1000)."""
        return network_time(self.schedule, t)

    def random_times(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """[B] float64 times drawn uniformly: integer steps of a discrete schedule, reals otherwise."""
        return uniform_times(self.schedule, batch, generator)

    # ------------------------------------------------------------------ training

    def forward(self, x0: torch.Tensor, cond: Conditioning, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-sample loss [B] for CLIP image embeddings ``x0`` [B, E] (any norm; see the module docstring).

        All randomness (times, noise, text dropout) comes from ``generator``.
        """
        z0 = self.to_diffusion(x0)  # [B, E]
        batch = z0.shape[0]
        t = self.random_times(batch, generator)
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
        z_t = q_sample(z0, t, self.schedule, noise)  # [B, E]
        drop = (torch.rand(batch, generator=generator) < self.config.text_drop_prob).to(z0.device)
        output = self.network(z_t, self.model_time(t).to(z0.device), replace(cond, drop_text=drop))  # [B, E]
        alpha, sigma = self.schedule.alpha_sigma(t)
        return simple_loss(output, z0, noise, alpha, sigma, self.schedule.log_snr(t), self.config.prediction, "none")

    # ------------------------------------------------------------------ sampling

    def denoiser(self, cond: Conditioning, guidance: float = 1.0) -> Denoiser:
        """The z_0-denoiser samplers call, with classifier-free guidance scale ``guidance``
        (Ho & Salimans 2022; one batched forward for the conditional and the null-text halves)."""
        return conditioned_denoiser(self.network, cond, self.schedule, self.config.prediction, guidance)

    @torch.no_grad()
    def sample(self, cond: Conditioning, batch: int, *, steps: int = 16, guidance: float = 1.0,
               sampler: str = "ddim", generator: torch.Generator | None = None, best_of: int = 1) -> torch.Tensor:
        """Unit CLIP image embeddings [B, E] for ``cond`` through a sampler of :mod:`cascade.sampling`.

        ``best_of`` k > 1 draws k embeddings per caption and keeps the one with the largest dot
        product with the caption's pooled text embedding (DALL-E 2, Sec. 2.2, draws two).
        """
        from cascade.sampling import sample

        if best_of > 1:
            if cond.pooled is None:
                raise UserError("best_of > 1 needs the pooled text embedding to choose among samples")
            repeated = Conditioning(**{k: (v.repeat(best_of, *[1] * (v.ndim - 1)) if v is not None else None)
                                       for k, v in cond.__dict__.items()})
            many = self.sample(repeated, batch * best_of, steps=steps, guidance=guidance, sampler=sampler,
                               generator=generator).reshape(best_of, batch, -1)  # [k, B, E]
            score = (many * F.normalize(cond.pooled.float(), dim=-1)[None]).sum(-1)  # [k, B]
            return many.gather(0, score.argmax(0)[None, :, None].expand(1, batch, many.shape[-1]))[0]  # [B, E]
        dtype = next(self.parameters()).dtype
        noise = torch.randn(batch, self.config.embed_dim, generator=generator).to(dtype)  # [B, E]
        z0 = sample(sampler, self.denoiser(cond, guidance), noise, self.schedule, steps, generator=generator)
        return self.from_diffusion(z0)
