"""Noise schedules against closed forms and against diffusers' betas."""

import math

import pytest
import torch

from cascade.diffusion.schedules import (
    ContinuousCosineSchedule,
    DiscreteSchedule,
    build_schedule,
    cosine_betas,
    linear_betas,
)
from cascade.errors import UserError

F64 = torch.float64
ALL_SCHEDULES = ["linear", "cosine", "cosine-continuous"]


def some_times(schedule):
    """Integer and fractional times across the schedule's whole range."""
    return torch.linspace(schedule.t_min, schedule.t_max, 1237, dtype=F64)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_alpha_squared_plus_sigma_squared_is_one(name):
    schedule = build_schedule(name)
    alpha, sigma = schedule.alpha_sigma(some_times(schedule))
    assert alpha.dtype == F64
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_log_snr_is_decreasing_and_invertible(name):
    schedule = build_schedule(name)
    t = some_times(schedule)
    lam = schedule.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(schedule.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam, rtol=1e-9, atol=1e-9)


def test_linear_alpha_bar_at_T_1000():
    # Independently: prod(1 - beta_i) as a sum of logs in plain Python.
    betas = [1e-4 + (2e-2 - 1e-4) * i / 999 for i in range(1000)]
    expected = math.exp(math.fsum(math.log1p(-b) for b in betas))
    schedule = DiscreteSchedule(linear_betas(1000))
    assert float(schedule.alphas_cumprod[-1]) == pytest.approx(expected, rel=1e-12)
    # Lin et al. 2024, table 1: the linear schedule ends at sqrt(alpha-bar_T) = 0.006353.
    assert math.sqrt(float(schedule.alphas_cumprod[-1])) == pytest.approx(0.006353, abs=5e-7)
    assert schedule.alpha(999.0) == pytest.approx(math.sqrt(expected), rel=1e-12)


def test_cosine_betas_closed_form_and_diffusers():
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

    betas = cosine_betas(1000)
    reference = betas_for_alpha_bar(1000, alpha_transform_type="cosine").to(F64)
    torch.testing.assert_close(betas, reference, rtol=1e-6, atol=1e-9)  # diffusers rounds to float32
    assert float(betas.max()) == 0.999  # clipped at the end
    # Away from the clip, alpha-bar is f(t) / f(0) exactly.
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    schedule = DiscreteSchedule(betas)
    for t in (0, 10, 500, 900):
        assert float(schedule.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-12)


def test_continuous_cosine_closed_form_and_shift():
    wide = ContinuousCosineSchedule(log_snr_min=-60, log_snr_max=60)
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    torch.testing.assert_close(wide.alpha(t), torch.cos(math.pi * t / 2), rtol=0, atol=1e-12)

    plain = ContinuousCosineSchedule()
    assert float(plain.log_snr(0.0)) == pytest.approx(15.0, abs=1e-9)
    assert float(plain.log_snr(1.0)) == pytest.approx(-15.0, abs=1e-9)
    shifted = build_schedule("shifted-cosine", resolution=256)
    torch.testing.assert_close(shifted.log_snr(t) - plain.log_snr(t), torch.full_like(t, 2 * math.log(64 / 256)))
    torch.testing.assert_close(shifted.t_from_log_snr(shifted.log_snr(t)), t, rtol=0, atol=1e-12)


def test_discrete_interpolation_between_steps():
    schedule = build_schedule("linear")
    lam = schedule.log_snr_table
    assert float(schedule.log_snr(10.25)) == pytest.approx(float(0.75 * lam[10] + 0.25 * lam[11]), rel=1e-14)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 1000])
def test_spacings_match_diffusers(spacing, steps):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    schedule = build_schedule("linear")
    ours = schedule.spaced_timesteps(steps, spacing)
    if spacing == "linspace":  # DPM-Solver's linspace (no model call at t = 0)
        reference = DPMSolverMultistepScheduler(timestep_spacing="linspace")
    else:
        reference = DDIMScheduler(timestep_spacing=spacing)
    reference.set_timesteps(steps)
    assert ours.tolist() == reference.timesteps.to(F64).tolist()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_schedule("quadratic"), "unknown schedule 'quadratic'"),
        (lambda: build_schedule("linear").spaced_timesteps(0), "steps must be a whole number >= 1, got 0"),
        (lambda: build_schedule("linear").spaced_timesteps(1001), "between 1 and 1000"),
        (lambda: build_schedule("linear").spaced_timesteps(10, "uniform"), "unknown spacing 'uniform'"),
        (lambda: build_schedule("shifted-cosine"), "needs the stage's resolution"),
        (lambda: build_schedule("linear", num_steps=1), "num_steps >= 2"),
    ],
)
def test_bad_input_is_a_one_line_error(call, message):
    with pytest.raises(UserError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
