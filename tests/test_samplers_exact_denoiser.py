"""Every sampler, driven by the exact denoiser of a 2-D Gaussian mixture, reproduces the mixture.

E[x0 | x_t] is known in closed form for a mixture (cascade.diffusion.gaussian_mixture), so any
error left is the sampler's. A negative control (the same sampler fed times one plan step off)
must fail the same check, which shows that the check can fail.
"""

import pytest
import torch

from cascade.diffusion import build_schedule
from cascade.diffusion.gaussian_mixture import example_mixture, sliced_wasserstein
from cascade.sampling import build_plan, get_sampler, sample

N = 20_000
MIXTURE = example_mixture()
TRUTH = MIXTURE.sample(N, torch.Generator().manual_seed(1))
# Two independent draws of N points from the mixture lie ~0.005 apart in sliced W1.
SLICED_W1_BOUND = 0.012


def mixture_errors(x: torch.Tensor) -> tuple[float, float, float]:
    """(mean error / data scale, relative covariance error in Frobenius norm, sliced W1 to the truth)."""
    covariance = MIXTURE.covariance()
    mean_error = float((x.mean(0) - MIXTURE.mean()).norm() / covariance.trace().sqrt())
    cov_error = float((torch.cov(x.T) - covariance).norm() / covariance.norm())
    return mean_error, cov_error, sliced_wasserstein(x, TRUTH)


def reproduces_mixture(x: torch.Tensor) -> bool:
    mean_error, cov_error, sw = mixture_errors(x)
    return mean_error < 0.02 and cov_error < 0.02 and sw < SLICED_W1_BOUND


def start_noise() -> torch.Tensor:
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# Steps at which each sampler has converged on this mixture (see benchmarks/samplers.py for the curves).
CONVERGED_STEPS = {"ddpm": 1000, "ddpm-large": 1000, "ddim": 250, "dpmpp-2m": 50, "euler": 250, "heun": 50}


@pytest.mark.parametrize("schedule_name", ["linear", "cosine", "cosine-continuous"])
@pytest.mark.parametrize("sampler", sorted(CONVERGED_STEPS))
def test_sampler_reproduces_the_mixture(sampler, schedule_name):
    schedule = build_schedule(schedule_name)
    x = sample(
        sampler,
        MIXTURE.denoiser(schedule),
        start_noise(),
        schedule,
        CONVERGED_STEPS[sampler],
        generator=torch.Generator().manual_seed(4),
    )
    assert reproduces_mixture(x), f"{sampler} on {schedule_name}: errors {mixture_errors(x)}"


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "heun"])
def test_negative_control_times_one_step_off_is_rejected(sampler):
    """At the very steps where the positive test passes, times one plan step late must fail."""
    schedule = build_schedule("linear")
    plan = build_plan(schedule, CONVERGED_STEPS[sampler], get_sampler(sampler).default_plan)
    exact = MIXTURE.denoiser(schedule)
    next_time = {float(a): float(b) for a, b in zip(plan.t[:-1], plan.t[1:])}

    def late_denoiser(x_t, t):  # told the time of the next step, as an off-by-one would
        return exact(x_t, torch.full_like(t, next_time.get(float(t[0]), float(t[0]))))

    x = get_sampler(sampler).function(late_denoiser, start_noise(), plan)
    assert not reproduces_mixture(x), f"the check accepted a broken sampler: errors {mixture_errors(x)}"
