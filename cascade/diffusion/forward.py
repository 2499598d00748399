"""The forward process q(x_t | x_0) and the posterior q(x_s | x_t, x_0) for s < t.

Written for any two times of a schedule, so the same code serves adjacent DDPM
steps and respaced or continuous-time steps (Kingma et al. 2021, "Variational
Diffusion Models", appendix A): with ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (= beta_t for adjacent steps),

    mean     = alpha_{t|s} sigma_s^2 / sigma_t^2 * x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 * x_0
    variance = sigma_{t|s}^2 sigma_s^2 / sigma_t^2     (beta-tilde, Ho et al. 2020, eq. 7)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade.diffusion.parametrization import expand_like
from cascade.diffusion.schedules import NoiseSchedule


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I).

    :param x0: [B, ...] clean data (images in [-1, 1]).
    :param t: [B] times in the schedule's units.
    :param noise: [B, ...] standard normal noise, the same shape as x0.
    :returns: [B, ...] in x0's dtype.
    """
    alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
    return expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * noise


@dataclass(frozen=True)
class StepCoefficients:
    """The posterior q(x_s | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance) for one step t -> s.

    ``beta`` is sigma_{t|s}^2, the forward variance of the step (DDPM's beta_t for adjacent steps);
    ``variance`` is beta-tilde. All float64 tensors of the shape of t.
    """

    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    variance: torch.Tensor
    beta: torch.Tensor


def step_coefficients(
    alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor
) -> StepCoefficients:
    """Posterior coefficients from the (alpha, sigma) of the two times; alpha_s = 1, sigma_s = 0 is allowed
    (the step into the clean endpoint: mean = x_0, variance = 0)."""
    ratio = alpha_t / alpha_s  # alpha_{t|s}
    beta = -torch.expm1(2 * (torch.log(alpha_t) - torch.log(alpha_s)))  # 1 - alpha_{t|s}^2 = sigma_{t|s}^2
    sigma_t2 = sigma_t**2
    return StepCoefficients(
        coef_x0=alpha_s * beta / sigma_t2,
        coef_xt=ratio * sigma_s**2 / sigma_t2,
        variance=beta * sigma_s**2 / sigma_t2,
        beta=beta,
    )


def q_posterior(
    x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: NoiseSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [B, ...] and variance [B] of q(x_s | x_t, x_0) for times s < t, each [B]."""
    alpha_t, sigma_t = schedule.alpha_sigma(t.to(torch.float64))
    alpha_s, sigma_s = schedule.alpha_sigma(s.to(torch.float64))
    c = step_coefficients(alpha_t, sigma_t, alpha_s, sigma_s)
    mean = expand_like(c.coef_x0, x0) * x0 + expand_like(c.coef_xt, x_t) * x_t
    return mean, c.variance
