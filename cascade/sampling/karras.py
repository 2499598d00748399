"""Euler and Heun steps of the probability-flow ODE (Karras et al. 2022, algorithm 1, no churn).

They work in the variance-exploding coordinates of the same process: x_ve = x / alpha with
noise level sigma_ve = sigma / alpha, where the ODE is dx_ve / d sigma_ve = (x_ve - x0_hat) / sigma_ve.
Any plan works; Karras sigmas (:func:`cascade.sampling.plan.karras_plan`) are their natural one.
"""

from __future__ import annotations

import torch

from cascade.sampling.ancestral import StepCallback
from cascade.sampling.noise import Generators
from cascade.sampling.denoiser import Denoiser, batch_times
from cascade.sampling.plan import SamplingPlan


def _ode_solve(
    denoiser: Denoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    second_order: bool,
    callback: StepCallback | None,
) -> torch.Tensor:
    sigma_ve = plan.sigma / plan.alpha  # [N + 1], 0 at the endpoint
    x_ve = x / float(plan.alpha[0])
    for i in range(plan.steps):
        s_t, s_s = float(sigma_ve[i]), float(sigma_ve[i + 1])
        x0_hat = denoiser(x_ve * float(plan.alpha[i]), batch_times(plan.t[i], x))
        slope = (x_ve - x0_hat) / s_t
        x_next = x_ve + (s_s - s_t) * slope
        if second_order and i < plan.steps - 1:  # Heun's correction; not into sigma = 0
            x0_next = denoiser(x_next * float(plan.alpha[i + 1]), batch_times(plan.t[i + 1], x))
            slope_next = (x_next - x0_next) / s_s
            x_next = x_ve + (s_s - s_t) * (slope + slope_next) / 2
        x_ve = x_next
        if callback is not None:
            callback(i, x_ve * float(plan.alpha[i + 1]), x0_hat)
    return x_ve * float(plan.alpha[-1])


def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler's method, N model evaluations. Deterministic (``generator`` unused).

    :param x: [B, ...] starting noise x_T ~ N(0, I) (variance-preserving). :returns: [B, ...] x_0.
    """
    return _ode_solve(denoiser, x, plan, second_order=False, callback=callback)


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Heun's second-order method, 2N - 1 model evaluations. Deterministic (``generator`` unused)."""
    return _ode_solve(denoiser, x, plan, second_order=True, callback=callback)
