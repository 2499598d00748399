"""Samplers by name, each with its default plan, and one entry point :func:`sample`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from cascade.diffusion.schedules import NoiseSchedule
from cascade.errors import UserError, choice_error
from cascade.sampling.ancestral import StepCallback, sample_ddim, sample_ddpm
from cascade.sampling.noise import Generators
from cascade.sampling.denoiser import Denoiser
from cascade.sampling.dpm_solver import sample_dpmpp_2m
from cascade.sampling.karras import sample_euler, sample_heun
from cascade.sampling.plan import build_plan


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler function ``(denoiser, x, plan, *, generator, callback) -> x0``, the plan it uses
    unless told otherwise, and its model evaluations per plan step (Heun: 2, less one at the end).
    ``stochastic``: it always adds fresh noise; ``takes_eta``: it adds noise when eta > 0 (DDIM)."""

    function: Callable[..., torch.Tensor]
    default_plan: str
    evaluations_per_step: int
    stochastic: bool
    description: str
    takes_eta: bool = False

    @property
    def adds_noise(self) -> bool:
        """Whether it may add fresh noise while sampling (and so takes ``generator`` and ``frame_correlation``)."""
        return self.stochastic or self.takes_eta

    def evaluations(self, steps: int) -> int:
        return steps * self.evaluations_per_step - (self.evaluations_per_step - 1)


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(partial(sample_ddpm, variance="beta_tilde"), "trailing", 1, True, "DDPM ancestral, sigma^2 = beta-tilde"),
    "ddpm-large": SamplerSpec(partial(sample_ddpm, variance="beta"), "trailing", 1, True, "DDPM ancestral, sigma^2 = beta"),
    "ddim": SamplerSpec(sample_ddim, "logsnr", 1, False, "DDIM (eta = 0: deterministic)", takes_eta=True),
    "dpmpp-2m": SamplerSpec(sample_dpmpp_2m, "logsnr", 1, False, "DPM-Solver++(2M), multistep second order"),
    "euler": SamplerSpec(sample_euler, "karras", 1, False, "Euler on Karras sigmas"),
    "heun": SamplerSpec(sample_heun, "karras", 2, False, "Heun on Karras sigmas (2 evaluations a step)"),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise choice_error("sampler", name, SAMPLER_NAMES)
    return SAMPLERS[name]


def sample(
    name: str,
    denoiser: Denoiser,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    plan: str | None = None,
    eta: float = 0.0,
    generator: Generators = None,
    frame_correlation: float = 0.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run sampler ``name`` for ``steps`` plan steps from ``noise`` [B, ...] ~ N(0, I); returns x_0 [B, ...].

    :param plan: ``leading``, ``trailing``, ``linspace``, ``karras`` or ``logsnr``; the sampler's default if None.
    :param eta: DDIM's eta (only for ``ddim``).
    :param frame_correlation: for clips [B, F, ...], the frame correlation of the noise that stochastic
        samplers add (the stage's ``frame_noise_correlation``; ``noise`` must already have it).
    """
    spec = get_sampler(name)
    sampling_plan = build_plan(schedule, steps, plan or spec.default_plan)
    kwargs = {"generator": generator, "callback": callback}
    if spec.adds_noise:
        kwargs["frame_correlation"] = frame_correlation
    if spec.takes_eta:
        kwargs["eta"] = eta
    elif eta != 0.0:
        raise UserError(f"eta applies to the ddim sampler only, not to {name!r}")
    return spec.function(denoiser, noise, sampling_plan, **kwargs)
