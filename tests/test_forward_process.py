"""q(x_t | x_0), the posterior, parametrisation conversions and losses against closed forms."""

import math

import pytest
import torch

from cascade.diffusion import build_schedule, q_posterior, q_sample
from cascade.diffusion.losses import min_snr_weight, simple_loss
from cascade.diffusion.parametrization import (
    eps_from_v,
    from_x0,
    to_x0,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from cascade.errors import UserError

F64 = torch.float64


@pytest.mark.parametrize("name, t", [("linear", 300.0), ("cosine", 700.0), ("cosine-continuous", 0.4)])
def test_q_sample_moments(name, t):
    schedule = build_schedule(name)
    n = 400_000
    x0 = torch.tensor([0.7, -0.3], dtype=F64).expand(n, 2)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_t = q_sample(x0, torch.full((n,), t), schedule, noise)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
    standard_error = sigma / math.sqrt(n)
    torch.testing.assert_close(x_t.mean(0), alpha * x0[0], rtol=0, atol=5 * standard_error)
    assert x_t.var(0).tolist() == pytest.approx([sigma**2] * 2, rel=5 * math.sqrt(2 / n))


@pytest.mark.parametrize("t", [1, 2, 10, 500, 999])
def test_posterior_is_the_product_of_gaussians(t):
    """q(x_{t-1} | x_t, x_0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x_0), computed from betas directly."""
    schedule = build_schedule("linear")
    beta = float(schedule.betas[t])
    abar_prev = float(schedule.alphas_cumprod[t - 1])
    generator = torch.Generator().manual_seed(t)
    x0, x_t = torch.randn(2, 3, 4, generator=generator, dtype=F64)
    # N(x_t; sqrt(1 - beta) x, beta) * N(x; sqrt(abar_prev) x0, 1 - abar_prev), as a density in x.
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)
    expected_mean = (math.sqrt(1 - beta) * x_t / beta + math.sqrt(abar_prev) * x0 / (1 - abar_prev)) / precision
    mean, variance = q_posterior(x0[None], x_t[None], torch.tensor([t]), torch.tensor([t - 1]), schedule)
    torch.testing.assert_close(mean[0], expected_mean, rtol=1e-12, atol=1e-12)
    assert float(variance) == pytest.approx(1 / precision, rel=1e-12)
    # ... which is DDPM's beta-tilde (Ho et al. 2020, eq. 7).
    assert float(variance) == pytest.approx((1 - abar_prev) / (1 - float(schedule.alphas_cumprod[t])) * beta, rel=1e-12)


def test_conversions_round_trip_in_float64():
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 8, 3, 5, 5, generator=generator, dtype=F64)
    for alpha in (0.9999, 0.7, 0.01):
        sigma = math.sqrt(1 - alpha**2)
        x_t = alpha * x0 + sigma * eps
        v = v_from_x0_eps(x0, eps, alpha, sigma)
        torch.testing.assert_close(x0_from_eps(x_t, eps, alpha, sigma), x0, rtol=0, atol=1e-12 / alpha)
        torch.testing.assert_close(x0_from_v(x_t, v, alpha, sigma), x0, rtol=0, atol=1e-12)
        torch.testing.assert_close(eps_from_v(x_t, v, alpha, sigma), eps, rtol=0, atol=1e-12)
        for prediction in ("eps", "x0", "v"):
            out = training_target(x0, eps, alpha, sigma, prediction)
            torch.testing.assert_close(to_x0(out, x_t, alpha, sigma, prediction), x0, rtol=0, atol=1e-12 / alpha)
            torch.testing.assert_close(from_x0(x0, x_t, alpha, sigma, prediction), out, rtol=0, atol=1e-12 / sigma)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_min_snr_times_x0_error(prediction):
    """||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2, so
    min-SNR-gamma weighting in any space equals min(SNR, gamma) times the x0-space error."""
    schedule = build_schedule("cosine")
    generator = torch.Generator().manual_seed(1)
    t = torch.tensor([5.0, 100.0, 400.0, 900.0], dtype=F64)
    alpha, sigma = schedule.alpha_sigma(t)
    log_snr = schedule.log_snr(t)
    x0, eps, x0_error = torch.randn(3, 4, 3, 8, 8, generator=generator, dtype=F64)
    shape = (-1, 1, 1, 1)
    x_t = alpha.reshape(shape) * x0 + sigma.reshape(shape) * eps
    x0_hat = x0 + 0.1 * x0_error
    output = from_x0(x0_hat, x_t, alpha.reshape(shape), sigma.reshape(shape), prediction)
    loss = simple_loss(output, x0, eps, alpha, sigma, log_snr, prediction, weighting="min_snr", min_snr_gamma=5.0)
    x0_mse = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    expected = torch.clamp(torch.exp(log_snr), max=5.0) * x0_mse
    torch.testing.assert_close(loss.to(F64), expected, rtol=1e-5, atol=0)  # the loss is computed in float32


def test_min_snr_weight_bad_gamma():
    with pytest.raises(UserError, match="min_snr_gamma must be > 0"):
        min_snr_weight(torch.zeros(2, dtype=F64), "eps", gamma=0.0)


def test_unknown_prediction_and_weighting():
    with pytest.raises(UserError, match="unknown prediction type 'score'"):
        to_x0(torch.zeros(1), torch.zeros(1), 1.0, 0.0, "score")
    z = torch.zeros(1, 2, dtype=F64)
    with pytest.raises(UserError, match="unknown loss weighting 'p2'"):
        simple_loss(z, z, z, z[0, :1], z[0, :1], z[0, :1], "eps", weighting="p2")
