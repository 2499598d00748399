"""Ancestral samplers: DDPM (Ho et al. 2020, algorithm 2) and DDIM (Song et al. 2021, eq. 12).

Both step from model time t to the plan's next time s (or the clean endpoint) through the
posterior q(x_s | x_t, x0 = x0_hat); respaced plans give respaced steps.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from cascade.diffusion.forward import step_coefficients
from cascade.diffusion.frame_noise import mix_frame_noise
from cascade.errors import UserError, choice_error
from cascade.sampling.denoiser import Denoiser, batch_times
from cascade.sampling.noise import Generators, randn
from cascade.sampling.plan import SamplingPlan

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called after each step with (step index, the new x, the x0 estimate of that step)."""

DdpmVariance = Literal["beta_tilde", "beta", "learned"]
DDPM_VARIANCES: tuple[str, ...] = ("beta_tilde", "beta", "learned")

LearnedVarianceDenoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(x_t, t) -> (x0_hat, v)`` with v in [-1, 1] interpolating log beta and log beta-tilde."""


def _noise(x: torch.Tensor, generator: Generators, frame_correlation: float) -> torch.Tensor:
    """Fresh N(0, I) noise like x; for clips [B, F, ...], frames correlated as the stage was trained."""
    return mix_frame_noise(randn(x.shape, generator, dtype=x.dtype, device=x.device), frame_correlation)


def sample_ddpm(
    denoiser: Denoiser | LearnedVarianceDenoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    *,
    variance: str = "beta_tilde",
    generator: Generators = None,
    frame_correlation: float = 0.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling: x_s = posterior mean + sqrt(variance) z, no noise into the clean endpoint.

    :param x: [B, ...] the starting noise x_T ~ N(0, I).
    :param variance: ``beta_tilde`` (the posterior variance, "fixed small"), ``beta`` (sigma_{t|s}^2,
        "fixed large") or ``learned`` (improved DDPM: ``denoiser`` returns (x0_hat, v) and the variance
        is exp(f log beta + (1 - f) log beta-tilde), f = (v + 1) / 2).
    :param frame_correlation: for clips, the correlation of the noise between frames (as x_T's).
    :returns: [B, ...] the sample x_0.
    """
    if variance not in DDPM_VARIANCES:
        raise choice_error("DDPM variance", variance, DDPM_VARIANCES)
    for i in range(plan.steps):
        output = denoiser(x, batch_times(plan.t[i], x))
        if (variance == "learned") != isinstance(output, tuple):
            raise UserError("variance='learned' goes with (only) a denoiser that returns (x0_hat, v)")
        x0_hat, v = output if variance == "learned" else (output, None)
        c = step_coefficients(plan.alpha[i], plan.sigma[i], plan.alpha[i + 1], plan.sigma[i + 1])
        mean = float(c.coef_x0) * x0_hat + float(c.coef_xt) * x
        last = i == plan.steps - 1
        if last:
            x = mean
        elif variance == "learned":
            frac = (v + 1) / 2
            log_var = frac * float(torch.log(c.beta)) + (1 - frac) * float(torch.log(c.variance))
            x = mean + torch.exp(0.5 * log_var) * _noise(x, generator, frame_correlation)
        else:
            var = c.variance if variance == "beta_tilde" else c.beta
            x = mean + float(var.sqrt()) * _noise(x, generator, frame_correlation)
        if callback is not None:
            callback(i, x, x0_hat)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    frame_correlation: float = 0.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM: x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z, c = eta * sqrt(beta-tilde).

    eta = 0 is the deterministic sampler (an ODE discretisation), eta = 1 equals DDPM with beta-tilde.
    eps_hat is recomputed from x0_hat, so clipping/thresholding of x0 acts on both terms.
    """
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"DDIM eta must be between 0 and 1, got {eta}")
    for i in range(plan.steps):
        x0_hat = denoiser(x, batch_times(plan.t[i], x))
        alpha_t, sigma_t = float(plan.alpha[i]), float(plan.sigma[i])
        alpha_s, sigma_s = float(plan.alpha[i + 1]), float(plan.sigma[i + 1])
        eps_hat = (x - alpha_t * x0_hat) / sigma_t
        c = step_coefficients(plan.alpha[i], plan.sigma[i], plan.alpha[i + 1], plan.sigma[i + 1])
        std = eta * float(c.variance.sqrt())
        x = alpha_s * x0_hat + max(sigma_s**2 - std**2, 0.0) ** 0.5 * eps_hat
        if std > 0:
            x = x + std * _noise(x, generator, frame_correlation)
        if callback is not None:
            callback(i, x, x0_hat)
    return x
