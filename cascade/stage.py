"""A diffusion stage: a U-Net, a noise schedule, a parametrisation and how it is conditioned.

Training and sampling go through the same object: ``stage(x0, cond, generator)`` is the
per-sample training loss, and ``stage.denoiser(cond, ...)`` is what samplers call. The network
sees times in [0, 1000) whatever the schedule's units (:func:`cascade.diffusion.timing.network_time`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cascade.diffusion.forward import q_sample
from cascade.diffusion.frame_noise import check_frame_correlation, mix_frame_noise
from cascade.diffusion.losses import frame_change_loss, simple_loss
from cascade.diffusion.schedules import NoiseSchedule, build_schedule
from cascade.diffusion.timing import network_time, uniform_times
from cascade.errors import UserError
from cascade.sampling.denoiser import Denoiser, denoiser_from_model
from cascade.sampling.noise import Generators, randn
from cascade.sampling.guidance import check_guidance_scale, classifier_free_guidance, dynamic_threshold, static_clip
from stages.conditioning import Conditioning
from stages.unet import UNet, UNetConfig

if TYPE_CHECKING:
    from cascade.text.base import TextEncoder


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"
    num_steps: int = 1000


@dataclass(frozen=True)
class StageConfig:
    """Everything that defines a stage apart from its weights.

    ``resolution`` is the output size; super-resolution stages also name ``low_resolution``, the
    size of the image they refine. ``frames`` > 1 makes a video stage (the U-Net needs temporal layers).
    Noise augmentation levels are fractions of the schedule's time range.

    ``residual_scale`` (super-resolution only): diffuse the residual ``(x_hi - up(x_lo)) / residual_scale``
    instead of the image itself, ``up`` being the bicubic upsampling of the low-res input (Li et al. 2022,
    "SRDiff", section 3.2). The network then only has to draw the detail the low-res image lacks. The
    ratio of the residual's standard deviation to the images' (about 0.125 in the shapes world at 256 px,
    0.08 at 1024 px) gives the scaled residual the spread of an image. None diffuses the image.

    ``first_frame_residual_scale`` (video stages with ``unet.first_frame_conditioning``): diffuse each
    frame's difference from the given first frame, ``(x_f - x_0) / first_frame_residual_scale``, instead
    of the frames: zero for frame 0, the background and still objects, non-zero only where something
    moved, so the clip holds its first frame by construction and the network draws only the motion.
    Frame 0's change is known (zero): it is left out of the loss and set exactly in sampling
    (:meth:`DiffusionStage.with_first_frame_known`). Every training sample then needs its first frame
    (clips only: ``data.image_fraction`` 0). About 0.33 in the shapes world (the differences'
    standard deviation over the frames'). None diffuses the frames.

    ``frame_noise_correlation`` (video stages): the correlation between the noise of any two frames of
    a clip, in training and sampling alike (:mod:`cascade.diffusion.frame_noise`); 0 draws every
    frame's noise independently.

    ``frame_change_weight`` (video stages): the weight of :func:`cascade.diffusion.losses.frame_change_loss`
    added to the loss of clips: it weighs what only the motion can get wrong, the change of the
    error from frame to frame. 0 trains on the plain loss.
    """

    name: str = "base64"
    resolution: int = 64
    low_resolution: int | None = None
    frames: int = 1
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Literal["eps", "x0", "v"] = "v"
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = 5.0
    text_drop_prob: float = 0.1
    image_drop_prob: float = 0.1
    max_train_aug: float = 0.5
    sample_aug: float = 0.1
    residual_scale: float | None = None
    first_frame_residual_scale: float | None = None
    frame_noise_correlation: float = 0.0
    frame_change_weight: float = 0.0
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % self.unet.downsampling_factor:
            raise ValueError(
                f"resolution must be >= 8 and a multiple of {self.unet.downsampling_factor}, got {self.resolution}"
            )
        if (self.low_resolution is None) != (self.unet.low_res_channels == 0):
            raise ValueError("low_resolution and unet.low_res_channels go together (super-resolution stages)")
        if self.low_resolution is not None and not 0 < self.low_resolution < self.resolution:
            raise ValueError(f"low_resolution must be between 1 and resolution, got {self.low_resolution}")
        if self.frames < 1 or (self.frames > 1 and not self.unet.temporal):
            raise ValueError("frames must be >= 1, and a video stage (frames > 1) needs unet.temporal")
        if self.residual_scale is not None and (self.low_resolution is None or not self.residual_scale > 0):
            raise ValueError("residual_scale must be > 0 and belongs to super-resolution stages only")
        if self.first_frame_residual_scale is not None and (
                not self.unet.first_frame_conditioning or not self.first_frame_residual_scale > 0):
            raise ValueError("first_frame_residual_scale must be > 0 and belongs to video stages given their "
                             "first frame (unet.first_frame_conditioning)")
        check_frame_correlation(self.frame_noise_correlation)
        if self.frame_change_weight < 0 or (self.frame_change_weight and self.frames == 1):
            raise ValueError("frame_change_weight must be >= 0 and belongs to video stages (frames > 1)")
        for name in ("text_drop_prob", "image_drop_prob", "max_train_aug", "sample_aug"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")

    @property
    def is_super_resolution(self) -> bool:
        return self.low_resolution is not None


class DiffusionStage(nn.Module):
    """One stage of the cascade. Images are [B, 3, H, W] in [-1, 1]; clips [B, F, 3, H, W]."""

    def __init__(self, config: StageConfig) -> None:
        super().__init__()
        self.config = config
        self.network = UNet(config.unet)
        self.schedule: NoiseSchedule = build_schedule(
            config.schedule.name, config.schedule.num_steps, resolution=config.resolution
        )

    # ------------------------------------------------------------------ time

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Schedule times [B] (float64) -> the network's time input [B] float32 in [0, 1000)."""
        return network_time(self.schedule, t)

    def random_times(self, batch: int, generator: torch.Generator | None, max_fraction: float = 1.0) -> torch.Tensor:
        """[B] float64 times drawn uniformly over the first ``max_fraction`` of the schedule."""
        return uniform_times(self.schedule, batch, generator, max_fraction)

    def aug_time(self, fraction: float) -> float:
        """The schedule time of a noise-augmentation level given as a fraction of the time range."""
        return self.schedule.t_min + fraction * (self.schedule.t_max - self.schedule.t_min)

    def clip_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Independent N(0, I) draws [B, F, 3, H, W] -> the stage's noise for clips (frames correlated
        by ``frame_noise_correlation``); images [B, 3, H, W] pass unchanged."""
        return mix_frame_noise(noise, self.config.frame_noise_correlation)

    # ------------------------------------------------------------------ conditioning

    def upsampled_low_res(self, low_res: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Low-res images [B, 3, h, w] (or clips [B, F, 3, h, w]) bicubically resized to ``size``
        (default: the stage's resolution; training on crops passes the crop's size)."""
        size = size or self.config.resolution
        if low_res.ndim == 5:
            b, f = low_res.shape[:2]
            return self.upsampled_low_res(low_res.flatten(0, 1), size).reshape(b, f, 3, size, size)
        if low_res.shape[-1] == size:
            return low_res
        return F.interpolate(low_res, size=(size, size), mode="bicubic", align_corners=False)

    def augmented(
        self, cond: Conditioning, aug_t: torch.Tensor, generator: Generators, noise: torch.Tensor | None = None,
        size: int | None = None,
    ) -> Conditioning:
        """Noise conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models", section 4.1):
        the upsampled low-res image is diffused to time ``aug_t`` [B] (with ``noise``, or noise drawn
        from ``generator``), and the network is told that time."""
        if cond.low_res is None:
            raise UserError(f"stage {self.config.name!r} refines an image: it needs the low-resolution input")
        low = self.upsampled_low_res(cond.low_res, size)
        if noise is None:
            noise = randn(low.shape, generator, dtype=low.dtype, device=low.device)
        noisy = q_sample(low, aug_t, self.schedule, noise.to(low.dtype))
        return replace(cond, low_res=noisy, aug_level=self.model_time(aug_t).to(low.device), low_res_clean=low)

    # ------------------------------------------------------------------ residuals (super-resolution, first frame)

    @property
    def diffuses_residual(self) -> bool:
        """Whether the stage diffuses a residual over its conditioning image rather than the image."""
        return self.config.residual_scale is not None or self.config.first_frame_residual_scale is not None

    def to_diffused(self, x0: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (or clips) -> what the stage diffuses: the image, or its scaled residual
        over ``base`` (same shape: the upsampled low-res input, or the first frame in every frame;
        :meth:`residual_base`)."""
        if not self.diffuses_residual:
            return x0
        return (x0 - base.to(x0.dtype)) / self._residual_scale

    def to_image(self, sample: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The inverse of :meth:`to_diffused` for a sampler's output [B, ...], with ``cond`` from
        :meth:`augmented` (super-resolution) or holding the first frame (video)."""
        if not self.diffuses_residual:
            return sample
        return self.residual_base(cond, sample) + self._residual_scale * sample

    @property
    def _residual_scale(self) -> float:
        return self.config.residual_scale or self.config.first_frame_residual_scale

    def residual_base(self, cond: Conditioning, x: torch.Tensor) -> torch.Tensor:
        """What the residual is taken over, in x's dtype and shape: ``cond.low_res_clean`` (clips refined
        frame by frame come flattened), or ``cond.first_frame`` [B, 3, H, W] repeated over x's frames."""
        if self.config.first_frame_residual_scale is not None:
            if cond.first_frame is None or x.ndim != 5:
                raise UserError(f"stage {self.config.name!r} diffuses clips as their change from the first frame: "
                                "it needs clips with their first frame (set data.image_fraction to 0)")
            return cond.first_frame.to(x)[:, None].expand_as(x)
        if cond.low_res_clean is None:
            raise UserError(f"stage {self.config.name!r} needs the low-resolution input from stage.augmented()")
        return cond.low_res_clean.to(x.dtype).reshape(x.shape)

    def _dropped(self, cond: Conditioning, batch: int, generator: torch.Generator | None) -> Conditioning:
        """Conditioning dropout for classifier-free guidance."""
        drop_text = torch.rand(batch, generator=generator) < self.config.text_drop_prob
        drop_image = torch.rand(batch, generator=generator) < self.config.image_drop_prob
        return replace(cond, drop_text=drop_text, drop_image=drop_image)

    # ------------------------------------------------------------------ training

    def forward(self, x0: torch.Tensor, cond: Conditioning, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-sample training loss [B] for clean images or clips x0 ([B, 3, H, W] or [B, F, 3, H, W]).

        All randomness (times, noise, dropout of the conditioning, augmentation levels) comes from
        ``generator`` so that a resumed run draws exactly what an uninterrupted one would.
        """
        batch = x0.shape[0]
        t = self.random_times(batch, generator)
        noise = self.clip_noise(torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device))
        cond = self._dropped(cond, batch, generator).to(x0.device)
        if self.config.is_super_resolution:
            aug_t = self.random_times(batch, generator, self.config.max_train_aug)
            cond = self.augmented(cond, aug_t, generator, size=x0.shape[-1])
        if self.diffuses_residual:  # the residual over the upsampled input, or the change from the first frame
            x0 = self.to_diffused(x0, self.residual_base(cond, x0))
        x_t = q_sample(x0, t, self.schedule, noise)
        output = self.network(x_t, self.model_time(t).to(x0.device), cond)
        output, x0, noise = self.learned_frames(output, x0, noise)  # frame 0's known change costs nothing
        alpha, sigma = self.schedule.alpha_sigma(t)
        c = self.config
        loss = simple_loss(output, x0, noise, alpha, sigma, self.schedule.log_snr(t), c.prediction, c.loss_weighting, c.min_snr_gamma)
        if c.frame_change_weight and x0.ndim == 5:
            loss = loss + c.frame_change_weight * frame_change_loss(output, x0, noise, alpha, sigma, c.prediction)
        return loss

    # ------------------------------------------------------------------ sampling

    def denoiser(self, cond: Conditioning, guidance: float = 1.0, threshold: str | None = None) -> Denoiser:
        """The x0-denoiser samplers call, conditioned on ``cond``, with classifier-free guidance scale
        ``guidance`` (one batched forward for both halves) and ``threshold`` None, "static" or "dynamic".

        A stage that diffuses residuals gets a denoiser of residuals (map its samples back with
        :meth:`to_image`); thresholds then act on the image the residual estimate implies.
        """
        if threshold not in (None, "static", "dynamic"):
            raise UserError(f"unknown threshold {threshold!r} (choose from: static, dynamic)")
        den = conditioned_denoiser(self.network, cond, self.schedule, self.config.prediction, guidance)
        if threshold is not None:
            clip = dynamic_threshold if threshold == "dynamic" else static_clip
            if not self.diffuses_residual:
                den = clip(den)
            else:
                den = self._thresholded_residual(den, clip, cond)
        if not self.knows_first_frame:
            return den
        return lambda x_t, t: self.with_first_frame_known(den(x_t, t))

    def _thresholded_residual(self, den: Denoiser, clip: Callable[[Denoiser], Denoiser],
                              cond: Conditioning) -> Denoiser:
        """A residual denoiser whose estimate is thresholded as the image it implies."""
        clipped_image = clip(lambda x_t, t: self.to_image(den(x_t, t), cond))
        return lambda x_t, t: self.to_diffused(clipped_image(x_t, t), self.residual_base(cond, x_t))

    @property
    def knows_first_frame(self) -> bool:
        """Whether frame 0 of what the stage diffuses is known: zero, the given first frame's change from
        itself (stages with ``first_frame_residual_scale``). It is left out of the loss and set in sampling."""
        return self.config.first_frame_residual_scale is not None

    def learned_frames(self, *clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each of ``clips`` [B, F, ...] restricted to the frames the network is trained on: frames 1..
        where :attr:`knows_first_frame`, else all (images pass unchanged)."""
        if not self.knows_first_frame:
            return clips
        return tuple(clip[:, 1:] for clip in clips)

    def with_first_frame_known(self, estimate: torch.Tensor) -> torch.Tensor:
        """An x0 estimate [B, F, 3, H, W] of what the stage diffuses, with frame 0 set to what it is known to be
        (zero) where :attr:`knows_first_frame`; unchanged otherwise."""
        if not self.knows_first_frame:
            return estimate
        return torch.cat([torch.zeros_like(estimate[:, :1]), estimate[:, 1:]], dim=1)


def conditioned_denoiser(network: nn.Module, cond: Conditioning, schedule: NoiseSchedule, prediction: str,
                         guidance: float = 1.0) -> Denoiser:
    """``network(x_t, network_time(t), cond)`` as a denoiser; with ``guidance`` != 1, classifier-free
    guidance over [cond; no cond] in one batched forward (shared by every stage and the prior)."""
    scale = check_guidance_scale(guidance)

    def model_for(conditioning: Conditioning):
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return network(x, network_time(schedule, t).to(x.device), conditioning).to(x.dtype)

        return model

    if scale == 1.0:
        return denoiser_from_model(model_for(cond), schedule, prediction)
    paired = denoiser_from_model(model_for(cond.doubled_for_guidance()), schedule, prediction)
    return classifier_free_guidance(paired, scale)


def check_text_dims(stage: DiffusionStage, encoder: TextEncoder | None) -> None:
    """A one-line error unless ``encoder`` gives what the stage's U-Net reads (token, pooled and word widths)."""
    unet = stage.config.unet
    if encoder is None:
        if unet.text_dim or unet.pooled_dim:
            raise UserError(f"stage {stage.config.name!r} is text-conditioned but the config names no text_encoder")
        return
    if unet.text_dim != encoder.dim or (unet.pooled_dim and unet.pooled_dim != encoder.pooled_dim):
        raise UserError(
            f"stage {stage.config.name!r} expects text dims {unet.text_dim}/{unet.pooled_dim} but the encoder "
            f"gives {encoder.dim}/{encoder.pooled_dim}"
        )
    if unet.text_word_dim and unet.text_word_dim != encoder.word_dim:
        raise UserError(
            f"stage {stage.config.name!r} reads {unet.text_word_dim}-wide word embeddings but the encoder "
            f"gives {encoder.word_dim or 'none'}"
        )
