"""The sampler entry point: names, plans, guidance wrappers, seeds and bad input."""

import math

import pytest
import torch

from cascade.diffusion import build_schedule
from cascade.diffusion.gaussian_mixture import example_mixture
from cascade.errors import UserError
from cascade.sampling import SAMPLER_NAMES, build_plan, classifier_free_guidance, karras_plan, sample, sample_ddpm
from cascade.sampling.guidance import dynamic_threshold_x0, static_clip

SCHEDULE = build_schedule("linear")
DENOISER = example_mixture().denoiser(SCHEDULE)


def noise(seed=0):
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_same_seed_same_result_and_different_seed_different(name):
    def run(noise_seed, sampler_seed):
        return sample(name, DENOISER, noise(noise_seed), SCHEDULE, 10, generator=torch.Generator().manual_seed(sampler_seed))

    assert torch.equal(run(0, 1), run(0, 1))
    assert not torch.equal(run(0, 1), run(2, 1))
    if name.startswith("ddpm"):  # only the ancestral samplers draw noise of their own
        assert not torch.equal(run(0, 1), run(0, 2))


def test_learned_variance_interpolates_between_the_fixed_variances():
    """v = -1 everywhere is sigma^2 = beta-tilde, v = +1 is sigma^2 = beta (improved DDPM, eq. 15)."""
    plan = build_plan(SCHEDULE, 30, "trailing")

    def run(variance, v=None):
        den = DENOISER if v is None else (lambda x, t: (DENOISER(x, t), torch.full_like(x, v)))
        return sample_ddpm(den, noise(), plan, variance=variance, generator=torch.Generator().manual_seed(5))

    torch.testing.assert_close(run("learned", -1.0), run("beta_tilde"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run("learned", 1.0), run("beta"), rtol=1e-12, atol=1e-12)


def test_classifier_free_guidance_is_one_batched_forward():
    calls = []

    def paired(x, t):  # first half "conditional" (+1), second half "unconditional" (-1)
        calls.append(x.shape[0])
        half = x.shape[0] // 2
        return x + torch.cat([torch.ones(half, 1), -torch.ones(half, 1)])

    guided = classifier_free_guidance(paired, 3.0)
    x = torch.zeros(4, 1)
    out = guided(x, torch.zeros(4, dtype=torch.float64))
    assert calls == [8]
    torch.testing.assert_close(out, torch.full((4, 1), -1.0 + 3.0 * 2.0))


def test_dynamic_threshold_closed_form():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, -0.4, 0.3, 0.9]])
    out = dynamic_threshold_x0(x0, percentile=1.0)
    torch.testing.assert_close(out[0], x0[0] / 3.0)  # s = max |x0| = 3
    torch.testing.assert_close(out[1], x0[1])  # s clamped to 1: nothing changes
    clipped = static_clip(lambda x, t: x * 5)(torch.tensor([[0.1, -0.5]]), torch.zeros(1))
    torch.testing.assert_close(clipped, torch.tensor([[0.5, -1.0]]))


def test_karras_plan_reaches_the_schedule_ends():
    plan = karras_plan(SCHEDULE, 25, sigma_max=float("inf"))
    assert float(plan.t[0]) == pytest.approx(999.0)
    assert float(plan.t[-1]) == pytest.approx(0.0, abs=1e-9)
    sigma_ve = plan.sigma / plan.alpha
    assert bool((sigma_ve[1:] < sigma_ve[:-1]).all()) and float(sigma_ve[-1]) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="ddpm2"), "unknown sampler 'ddpm2'"),
        (dict(steps=0), "steps must be a whole number >= 1, got 0"),
        (dict(steps=-3), "steps must be a whole number >= 1"),
        (dict(steps=1001), "between 1 and 1000"),
        (dict(steps=2.5), "steps must be a whole number"),
        (dict(plan="cosine"), "unknown plan 'cosine'"),
        (dict(name="ddim", eta=1.5), "eta must be between 0 and 1"),
        (dict(name="euler", eta=0.5), "eta applies to the ddim sampler only"),
    ],
)
def test_bad_sampler_input_is_a_one_line_error(kwargs, message):
    args = dict(name="ddim", steps=10)
    args.update(kwargs)
    with pytest.raises(UserError, match=message) as info:
        sample(args.pop("name"), DENOISER, noise(), SCHEDULE, args.pop("steps"), **args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -math.inf, "strong", None])
def test_guidance_scale_must_be_finite(scale):
    with pytest.raises(UserError, match="guidance scale must be a finite number"):
        classifier_free_guidance(lambda x, t: x, scale)
