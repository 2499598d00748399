"""The U-Net of every stage: base, super-resolution, image or video (temporal layers switched on).

In the spirit of Imagen's Efficient U-Net (Saharia et al. 2022, appendix B): residual blocks
with the time (and noise-augmentation) embedding, capacity set per level, attention with text
tokens only at the low resolutions, the pooled text / image embedding added to the time
embedding, and the image embedding also turned into extra context tokens (unCLIP, Ramesh et al.
2022, section 2.1). Attention runs through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.attention import SpatialAttention
from stages.blocks import Downsample, ResBlock, Upsample, zero_module
from stages.modulations import Modulation, modulations
from stages.fused import Conv2d
from stages.group_norm import group_norm, group_norm_silu
from stages.conditioning import Conditioning
from stages.context_refiner import ContextRefiner
from stages.embeddings import NullableProjection, TimeEmbedding, sinusoidal_embedding
from stages.temporal import TemporalAttention, TemporalConv


#: The first-frame conditioning of a video U-Net: the frame's 3 channels and a flag channel (1 where given).
FIRST_FRAME_CHANNELS = 4


@dataclass(frozen=True)
class UNetConfig:
    """The shape of a U-Net. Level i works at 1/2^i of the input size with base_channels * channel_mults[i]
    channels, ``res_blocks[i]`` residual blocks and, where ``attention_levels[i]``, attention.

    ``first_frame_conditioning`` (video U-Nets): every frame of a clip also sees the clip's given
    first frame, concatenated to its input with a flag channel, as in Emu Video (Girdhar et al. 2023,
    "factorizing text-to-video generation by explicit image conditioning"): the image stage draws
    the scene and the video stage only has to move it. Images and clips without a given frame get zeros.

    ``text_context_layers``: transformer layers over the text context, trained with the stage
    (:class:`~stages.context_refiner.ContextRefiner`); 0 feeds the encoder's states to attention as they are.

    ``attention_positions``: every spatial attention block adds where each position is to its tokens
    (:func:`~stages.attention.position_features`), so relation words ("left of", "above") can bind to places."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    head_dim: int = 32
    dropout: float = 0.0
    text_dim: int | None = None
    text_word_dim: int | None = None
    text_context_layers: int = 0
    attention_positions: bool = False
    pooled_dim: int | None = None
    image_embed_dim: int | None = None
    image_tokens: int = 4
    context_dim: int = 256
    low_res_channels: int = 0
    noise_augmentation: bool = False
    temporal: bool = False
    temporal_max_distance: int = 16
    temporal_frame_position: bool = False
    first_frame_conditioning: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        levels = len(self.channel_mults)
        if levels < 1 or len(self.res_blocks) != levels or len(self.attention_levels) != levels:
            raise ValueError("channel_mults, res_blocks and attention_levels must have one entry per level")
        if self.first_frame_conditioning and not self.temporal:
            raise ValueError("first_frame_conditioning belongs to video U-Nets (temporal)")
        if self.text_context_layers < 0 or (self.text_context_layers and not self.text_dim):
            raise ValueError("text_context_layers must be 0 or more and needs text tokens (text_dim)")

    @property
    def input_channels(self) -> int:
        """Channels of the input convolution: the noisy image, the low-res image (super-resolution)
        and the given first frame with its presence flag (:data:`FIRST_FRAME_CHANNELS`)."""
        extra = FIRST_FRAME_CHANNELS if self.first_frame_conditioning else 0
        return self.in_channels + self.low_res_channels + extra

    @property
    def embed_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def has_context(self) -> bool:
        return self.text_dim is not None or self.image_embed_dim is not None

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


def _cast(cond: Conditioning, dtype: torch.dtype) -> Conditioning:
    """The floating-point conditioning tensors in the network's weight dtype (bf16 weights take bf16)."""
    names = ("text_tokens", "text_words", "pooled", "image_embed")
    changes = {n: getattr(cond, n).to(dtype) for n in names if getattr(cond, n) is not None and getattr(cond, n).dtype != dtype}
    return replace(cond, **changes) if changes else cond


@dataclass
class _State:
    """What every block needs besides x, computed once per forward."""

    emb: torch.Tensor  # [N, E]
    context: torch.Tensor | None  # [N, L, D_ctx]
    context_mask: torch.Tensor | None  # [N, L]
    frames: int
    video_mask: torch.Tensor | None  # [B]
    modulations: dict[ResBlock, Modulation] | None = None  # every block's (scale, shift), in inference


class Unit(nn.Module):
    """One residual block, then (where configured) attention and the temporal layers."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, config.embed_dim, config.dropout)
        context_dim = config.context_dim if config.has_context else None
        self.attention = (
            SpatialAttention(out_channels, config.head_dim, context_dim, config.attention_positions) if attention else None
        )
        self.temporal_conv = TemporalConv(out_channels) if config.temporal else None
        self.temporal_attention = (
            TemporalAttention(out_channels, config.head_dim, config.temporal_max_distance)
            if config.temporal and attention
            else None
        )

    def forward(self, x: torch.Tensor, state: _State, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, C, H, W]; ``skip``: the U-Net's skip connection, concatenated to x along channels."""
        x = self.res(x, state.emb, skip, state.modulations[self.res] if state.modulations else None)
        video = state.frames > 1
        if self.temporal_conv is not None and video:
            x = self.temporal_conv(x, state.frames, state.video_mask)
        if self.attention is not None:
            x = self.attention(x, state.context, state.context_mask)
        if self.temporal_attention is not None and video:
            x = self.temporal_attention(x, state.frames, state.video_mask)
        return x


class UNet(nn.Module):
    """x [B, C, H, W] or [B, F, C, H, W], t [B] (time in [0, 1000)) -> the same shape with ``out_channels``.

    H and W must be multiples of ``config.downsampling_factor``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.channels_last_activations = True  # see forward(); benchmarks/train_step.py measures both
        c = config
        widths = [c.base_channels * m for m in c.channel_mults]
        self.time_embed = TimeEmbedding(c.base_channels, c.embed_dim)
        self.aug_embed = TimeEmbedding(c.base_channels, c.embed_dim) if c.noise_augmentation else None
        self.pooled_embed = NullableProjection(c.pooled_dim, c.embed_dim) if c.pooled_dim else None
        self.text_context = NullableProjection(c.text_dim, c.context_dim) if c.text_dim else None
        # The encoder's word embeddings, added to each token's context through a zero-initialised
        # projection: a stage trained without them computes the same at first. A small contrastive
        # text encoder folds words together in its final states ("cube" and "sphere" differ by a third
        # of a state's norm in the world CLIP's); its word embeddings keep every word apart.
        self.text_words = None
        if c.text_dim and c.text_word_dim:
            self.text_words = nn.Sequential(nn.LayerNorm(c.text_word_dim), zero_module(nn.Linear(c.text_word_dim, c.context_dim)))
        # A few transformer layers over the text context, trained with the stage (GLIDE's text
        # transformer; stages/context_refiner.py): the identity at first.
        self.text_refiner = None
        if c.text_context_layers:  # (the config has checked that there are text tokens)
            self.text_refiner = ContextRefiner(c.context_dim, c.text_context_layers, c.head_dim)
        self.image_embed = NullableProjection(c.image_embed_dim, c.embed_dim) if c.image_embed_dim else None
        self.image_context = (
            NullableProjection(c.image_embed_dim, c.image_tokens * c.context_dim) if c.image_embed_dim else None
        )
        # Which frame of its clip each frame is, added to a clip's embedding: frame k of a falling
        # object must know to draw it k steps down. Sinusoidal features of k through a zero-initialised
        # projection, so a checkpoint without it computes the same at first; every weight of the
        # projection moves each output, so it grows ~base_channels times faster under Adam than a
        # zero-initialised table (which moved by 0.03 in norm over 250 steps).
        self.temporal_frame_embed = None
        if c.temporal and c.temporal_frame_position:
            self.temporal_frame_embed = zero_module(nn.Linear(c.base_channels, c.embed_dim))

        self.input_conv = Conv2d(c.input_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [widths[0]]
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(c.res_blocks[level]):
                self.down.append(Unit(channels, width, c, c.attention_levels[level]))
                channels = width
                skip_channels.append(channels)
            if level < len(widths) - 1:
                self.down.append(Downsample(channels, channels))
                skip_channels.append(channels)
        self.middle = nn.ModuleList([Unit(channels, channels, c, True), Unit(channels, channels, c, False)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(c.res_blocks[level] + 1):
                self.up.append(Unit(channels + skip_channels.pop(), widths[level], c, c.attention_levels[level]))
                channels = widths[level]
            if level > 0:
                self.up.append(Upsample(channels, channels))
        self.output = nn.Sequential(group_norm(channels), nn.SiLU(), zero_module(Conv2d(channels, c.out_channels, 3, padding=1)))

    # ------------------------------------------------------------------ conditioning

    def _embed(self, t: torch.Tensor, cond: Conditioning, frames: int, dtype: torch.dtype) -> _State:
        c = self.config
        cond = _cast(cond, dtype)
        emb = self.time_embed(t)  # [B, E]
        if self.aug_embed is not None:
            aug = cond.aug_level if cond.aug_level is not None else torch.zeros_like(t)
            emb = emb + self.aug_embed(aug)
        tokens, masks = [], []
        if self.text_context is not None and cond.text_tokens is not None:
            text = self.text_context(cond.text_tokens, None)  # [B, L, D_ctx]
            if self.text_words is not None:
                if cond.text_words is None:
                    raise ValueError("this U-Net reads the text encoder's word embeddings (text_word_dim) but got none")
                text = text + self.text_words(cond.text_words)  # [B, L, D_ctx]
            mask = cond.text_mask if cond.text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            if self.text_refiner is not None:
                text = self.text_refiner(text, mask)  # [B, L, D_ctx]
            if cond.drop_text is not None:
                null = self.text_context.null.to(text.dtype)
                dropped = cond.drop_text[:, None]
                text = torch.where(dropped[..., None], null.expand_as(text), text)
                first_only = torch.zeros_like(mask)
                first_only[:, 0] = True
                mask = torch.where(dropped, first_only, mask)
            tokens.append(text)
            masks.append(mask)
        if self.pooled_embed is not None and cond.pooled is not None:
            emb = emb + self.pooled_embed(cond.pooled, cond.drop_text)
        if self.image_embed is not None and cond.image_embed is not None:
            emb = emb + self.image_embed(cond.image_embed, cond.drop_image)
            image_tokens = self.image_context(cond.image_embed, cond.drop_image)
            image_tokens = image_tokens.reshape(t.shape[0], c.image_tokens, c.context_dim)
            tokens.append(image_tokens)
            masks.append(torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device))
        context = torch.cat(tokens, dim=1).to(dtype) if tokens else None
        context_mask = torch.cat(masks, dim=1) if masks else None
        if frames > 1:  # every frame of a clip sees its clip's conditioning
            emb = emb.repeat_interleave(frames, dim=0)
            if self.temporal_frame_embed is not None:
                emb = emb + self._frame_positions(t.shape[0], frames, cond.video_mask).to(emb.dtype)
            if context is not None:
                context = context.repeat_interleave(frames, dim=0)
                context_mask = context_mask.repeat_interleave(frames, dim=0)
        return _State(emb.to(dtype), context, context_mask, frames, cond.video_mask)

    def _frame_positions(self, batch: int, frames: int, video_mask: torch.Tensor | None) -> torch.Tensor:
        """[B*F, E]: each frame's position embedding; zero for samples flagged as images (``video_mask`` False).
        Frame k's embedding does not depend on the clip's length (periods up to 100 frames)."""
        weight = self.temporal_frame_embed.weight
        index = torch.arange(frames, device=weight.device)
        features = sinusoidal_embedding(index, self.config.base_channels, max_period=100.0).to(weight.dtype)
        positions = self.temporal_frame_embed(features).repeat(batch, 1)  # [B*F, E]
        if video_mask is not None:
            positions = positions * video_mask.to(positions).repeat_interleave(frames)[:, None]
        return positions

    @staticmethod
    def _first_frame_input(cond: Conditioning, batch: int, frames: int, like: torch.Tensor, video: bool) -> torch.Tensor:
        """[B*F, 4, H, W]: the clip's given first frame [B, 3, H, W] in every frame of the clip, then a
        channel of ones; all zeros for image input, for samples flagged as images and without a frame."""
        height, width = like.shape[-2:]
        if not video or cond.first_frame is None:
            return like.new_zeros(batch * frames, FIRST_FRAME_CHANNELS, height, width)
        frame = cond.first_frame.to(like)[:, None].expand(batch, frames, 3, height, width)
        flag = like.new_ones(batch, frames, 1, height, width)
        given = torch.cat([frame, flag], dim=2)  # [B, F, 4, H, W]
        if cond.video_mask is not None:
            given = given * cond.video_mask.to(like)[:, None, None, None, None]
        return given.flatten(0, 1)

    # ------------------------------------------------------------------ forward

    def _res_blocks(self) -> list[ResBlock]:
        return [unit.res for unit in [*self.down, *self.middle, *self.up] if isinstance(unit, Unit)]

    def _run(self, module: nn.Module, x: torch.Tensor, state: _State, skip: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(module, Unit):
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                return checkpoint(module, x, state, skip, use_reentrant=False)
            return module(x, state, skip)
        return module(x)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        cond = cond or Conditioning()
        video = x.ndim == 5
        batch, frames = x.shape[0], (x.shape[1] if video else 1)
        h = x.flatten(0, 1) if video else x  # [B*F, C, H, W]
        if self.config.low_res_channels:
            if cond.low_res is None:
                raise ValueError("a super-resolution U-Net needs cond.low_res")
            low_res = cond.low_res.flatten(0, 1) if cond.low_res.ndim == 5 else cond.low_res
            h = torch.cat([h, low_res.to(h.dtype)], dim=1)
        if self.config.first_frame_conditioning:
            h = torch.cat([h, self._first_frame_input(cond, batch, frames, h, video)], dim=1)
        dtype = self.input_conv.weight.dtype
        # A bf16 network takes fp32 inputs too. Channels-last activations whatever the weights' layout
        # (the training engine keeps them contiguous): a video64 training step on the 2-core CPU
        # took 3.97 s against 4.30 s with contiguous ones (benchmarks/train_step.py).
        layout = torch.channels_last if self.channels_last_activations else torch.contiguous_format
        h = h.to(dtype=dtype, memory_format=layout)
        state = self._embed(t, cond, frames, dtype)
        state.modulations = modulations(self, self._res_blocks(), state.emb)

        h = self.input_conv(h)
        skips = [h]
        for module in self.down:
            h = self._run(module, h, state)
            skips.append(h)
        for module in self.middle:
            h = self._run(module, h, state)
        for module in self.up:
            h = self._run(module, h, state, skips.pop() if isinstance(module, Unit) else None)
        # the head's GroupNorm and SiLU in one pass where our kernels run (the Sequential's own call, and
        # so hooks on it, are bypassed; its parameters are the same)
        norm, _, conv = self.output  # GroupNorm, SiLU, conv
        out = conv(group_norm_silu(norm, h))  # [B*F, C_out, H, W]
        return out.reshape(batch, frames, *out.shape[1:]) if video else out
