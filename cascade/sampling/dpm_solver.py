"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in x0 form.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", algorithm 2. With lambda = log(alpha / sigma) and h = lambda_s - lambda_t:

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,   D = x0_i + (x0_i - x0_{i-1}) / (2 r),

r = h_{i-1} / h_i; the first step and the step into the clean endpoint are first order
(D = x0_i; the latter returns x0_i itself).
"""

from __future__ import annotations

import math

import torch

from cascade.sampling.ancestral import StepCallback
from cascade.sampling.noise import Generators
from cascade.sampling.denoiser import Denoiser, batch_times
from cascade.sampling.plan import SamplingPlan


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    plan: SamplingPlan,
    *,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic; ``generator`` is accepted for a uniform signature and unused.

    :param x: [B, ...] starting noise x_T ~ N(0, I). :returns: [B, ...] the sample x_0.
    """
    lam = plan.log_snr / 2  # log(alpha / sigma), +inf at the endpoint
    previous_x0: torch.Tensor | None = None
    previous_h = 0.0
    for i in range(plan.steps):
        x0_hat = denoiser(x, batch_times(plan.t[i], x))
        if i == plan.steps - 1:  # into the clean endpoint: sigma_s = 0, e^{-h} = 0
            x = x0_hat
        else:
            h = float(lam[i + 1] - lam[i])
            alpha_s = float(plan.alpha[i + 1])
            sigma_ratio = float(plan.sigma[i + 1] / plan.sigma[i])
            phi = math.expm1(-h)  # e^{-h} - 1
            if previous_x0 is None:
                d = x0_hat
            else:
                r = previous_h / h
                d = x0_hat + (x0_hat - previous_x0) / (2 * r)
            x = sigma_ratio * x - alpha_s * phi * d
            previous_h = h
        previous_x0 = x0_hat
        if callback is not None:
            callback(i, x, x0_hat)
    return x
