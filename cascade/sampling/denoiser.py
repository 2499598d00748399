"""The one interface samplers see: a denoiser ``(x_t [B, ...], t [B]) -> x0_hat [B, ...]``.

``t`` holds model times in the schedule's units (float64). A network that predicts eps or v
becomes a denoiser through :func:`denoiser_from_model`; guidance and clipping wrap a denoiser
and return another (see :mod:`cascade.sampling.guidance`).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from cascade.diffusion.parametrization import check_prediction, expand_like, to_x0
from cascade.diffusion.schedules import NoiseSchedule


class Denoiser(Protocol):
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t [B, ...] and model times t [B] (float64) -> the estimate of x_0 [B, ...]."""
        ...


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def denoiser_from_model(model: ModelFn, schedule: NoiseSchedule, prediction: str) -> Denoiser:
    """Wrap ``model(x_t, t) -> output`` (an eps, x0 or v prediction) as a denoiser.

    The conversion runs in x's dtype with alpha and sigma computed in float64.
    """
    check_prediction(prediction)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t)
        output = model(x_t, t)
        return to_x0(output, x_t, expand_like(alpha, x_t), expand_like(sigma, x_t), prediction)

    return denoise


def batch_times(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A plan's scalar time as a float64 vector [B] for the batch x [B, ...].

    Times stay on the CPU, beside the schedules' float64 tables, whatever x's device; the values
    derived from them reach x's device through ``expand_like`` and the network's time input.
    """
    return torch.full((x.shape[0],), float(t), dtype=torch.float64)
