"""Classifier-free guidance and clipping, each a wrapper that turns a denoiser into another.

Guidance is linear in the prediction, and eps, x0 and v are affine in one another for a
fixed x_t, so guiding the x0 estimate is the same as guiding eps or v.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from cascade.errors import UserError
from cascade.sampling.denoiser import Denoiser


def check_guidance_scale(scale: float) -> float:
    """The scale as a float, or a one-line :class:`UserError` if it is not a finite number."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"guidance scale must be a finite number, got {scale!r}") from None
    if not math.isfinite(value):
        raise UserError(f"guidance scale must be a finite number, got {scale!r}")
    return value


def classifier_free_guidance(
    paired: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float
) -> Denoiser:
    """Ho & Salimans 2022, eq. 6: ``x0 = x0_uncond + s * (x0_cond - x0_uncond)``, as one batched forward.

    :param paired: ``(x [2B, ...], t [2B]) -> x0 [2B, ...]`` whose first half is conditioned and
        second half unconditioned (the caller arranges the conditioning that way).
    :param scale: s; 1 is plain conditional sampling, 0 unconditional.
    """
    s = check_guidance_scale(scale)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional, unconditional = paired(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
        return unconditional + s * (conditional - unconditional)

    return denoise


def static_clip(denoiser: Denoiser, limit: float = 1.0) -> Denoiser:
    """Clamp the x0 estimate to [-limit, limit] (Ho et al. 2020's sampler for images in [-1, 1])."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(x_t, t).clamp(-limit, limit)

    return denoise


def dynamic_threshold_x0(x0: torch.Tensor, percentile: float = 0.995, max_value: float = float("inf")) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3) of x0 [B, ...].

    Per sample, s = the ``percentile`` quantile of |x0|, clamped to [1, max_value]; then x0 is
    clamped to [-s, s] and divided by s, which pushes saturated pixels inwards.
    """
    flat = x0.reshape(x0.shape[0], -1).abs()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # torch.quantile needs one of these
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0, max=max_value)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def dynamic_threshold(denoiser: Denoiser, percentile: float = 0.995, max_value: float = float("inf")) -> Denoiser:
    """Wrap a denoiser with :func:`dynamic_threshold_x0`."""
    if not 0 < percentile <= 1:
        raise UserError(f"thresholding percentile must be in (0, 1], got {percentile}")

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return dynamic_threshold_x0(denoiser(x_t, t), percentile, max_value)

    return denoise
