"""Sampling plans: the times a sampler evaluates the model at, with their alpha and sigma.

A plan of N steps holds N model times ``t[0] > t[1] > ... > t[N-1]`` and N + 1 pairs
(alpha, sigma): one per model time, then the clean endpoint (alpha = 1, sigma = 0) that the
last step lands on. Samplers read nothing else, so every sampler works with every plan:
respaced DDPM steps (guided-diffusion's ``respace.py`` idea: skip steps by choosing times, not
by touching the model) or Karras et al.'s sigmas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cascade.diffusion.schedules import SPACINGS, NoiseSchedule
from cascade.errors import UserError, choice_error

F64 = torch.float64


@dataclass(frozen=True)
class SamplingPlan:
    """``t`` [N] model times (schedule units, decreasing); ``alpha``, ``sigma`` [N + 1] float64,
    the last entry being the clean endpoint (1, 0)."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    @property
    def steps(self) -> int:
        return self.t.numel()

    @property
    def log_snr(self) -> torch.Tensor:
        """[N + 1] log(alpha^2 / sigma^2); +inf at the clean endpoint."""
        return 2 * (torch.log(self.alpha) - torch.log(self.sigma))


def plan_from_times(schedule: NoiseSchedule, t: torch.Tensor) -> SamplingPlan:
    """A plan over the given model times [N] (strictly decreasing) of ``schedule``."""
    t = torch.as_tensor(t, dtype=F64).flatten()
    if t.numel() < 1:
        raise UserError("a sampling plan needs at least one time")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise UserError("sampling times must be strictly decreasing (most noisy first)")
    alpha, sigma = schedule.alpha_sigma(t)
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)
    return SamplingPlan(t=t, alpha=torch.cat([alpha, one]), sigma=torch.cat([sigma, zero]))


def spaced_plan(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> SamplingPlan:
    """``steps`` respaced times of the schedule (see :meth:`NoiseSchedule.spaced_timesteps`)."""
    return plan_from_times(schedule, schedule.spaced_timesteps(steps, spacing))


#: Karras et al. 2022 (section 5) start sampling at sigma_ve = 80: above it the data is invisible, and
#: schedules such as improved DDPM's cosine reach sigma_ve of ~1e4, where evenly placed steps are wasted.
SIGMA_VE_MAX = 80.0


def _log_snr_range(schedule: NoiseSchedule, sigma_max: float | None) -> tuple[float, float]:
    """(least, greatest) log-SNR a plan spans: the schedule's range, capped at sigma_ve <= sigma_max."""
    ends = schedule.log_snr(torch.tensor([schedule.t_max, schedule.t_min], dtype=F64))
    cap = -2 * math.log(SIGMA_VE_MAX if sigma_max is None else sigma_max)
    return max(float(ends[0]), cap), float(ends[1])


def _plan_from_log_snr(schedule: NoiseSchedule, log_snr: torch.Tensor) -> SamplingPlan:
    t = schedule.t_from_log_snr(log_snr)
    # Distinct levels can map to one time at the schedule's ends; keep the plan strictly decreasing.
    keep = torch.cat([torch.tensor([True]), t[1:] < t[:-1]])
    return plan_from_times(schedule, t[keep])


def karras_plan(schedule: NoiseSchedule, steps: int, rho: float = 7.0, sigma_max: float | None = None) -> SamplingPlan:
    """Karras et al. 2022 ("Elucidating the Design Space", eq. 5) noise levels, mapped to the schedule.

    In variance-exploding terms sigma_ve = sigma / alpha = exp(-log_snr / 2). The levels are
    ``(s_max^(1/rho) + i / (N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` for i = 0..N-1, from the
    schedule's largest sigma_ve (capped at ``sigma_max``, default 80) to its smallest, each mapped
    back to a (fractional) model time.
    """
    schedule.validate_steps(steps)
    if not rho > 0:
        raise UserError(f"rho must be > 0, got {rho}")
    lam_min, lam_max = _log_snr_range(schedule, sigma_max)
    s_max, s_min = math.exp(-lam_min / 2), math.exp(-lam_max / 2)
    ramp = torch.linspace(0, 1, steps, dtype=F64)
    sigmas_ve = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _plan_from_log_snr(schedule, -2 * torch.log(sigmas_ve))


def log_snr_plan(schedule: NoiseSchedule, steps: int, sigma_max: float | None = None) -> SamplingPlan:
    """Levels evenly spaced in log-SNR over the schedule's range (sigma_ve capped at ``sigma_max``,
    default 80): the "logSNR" time steps that Lu et al. 2022 (DPM-Solver, section 3.3) recommend
    for few-step sampling of pixel-space models."""
    schedule.validate_steps(steps)
    lam_min, lam_max = _log_snr_range(schedule, sigma_max)
    return _plan_from_log_snr(schedule, torch.linspace(lam_min, lam_max, steps, dtype=F64))


PLAN_KINDS: tuple[str, ...] = SPACINGS + ("karras", "logsnr")


def build_plan(schedule: NoiseSchedule, steps: int, kind: str) -> SamplingPlan:
    """A plan by name: one of the spacings (leading, trailing, linspace), ``karras`` or ``logsnr``."""
    if kind == "karras":
        return karras_plan(schedule, steps)
    if kind == "logsnr":
        return log_snr_plan(schedule, steps)
    if kind not in SPACINGS:
        raise choice_error("plan", kind, PLAN_KINDS)
    return spaced_plan(schedule, steps, kind)
