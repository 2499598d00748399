"""Improved DDPM's learned variance and hybrid loss against closed forms."""

import math

import pytest
import torch

from cascade.diffusion import build_schedule
from cascade.diffusion.parametrization import training_target
from cascade.diffusion.variance import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    interpolated_log_variance,
    normal_kl,
    step_log_variance_bounds,
    vlb_term,
)

F64 = torch.float64


def test_normal_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 100, generator=generator, dtype=F64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.3, -1.0), (-0.99, -5.0), (2.0, 0.5)])
def test_discretized_likelihood_is_a_distribution_over_256_levels(mean, log_scale):
    levels = torch.arange(256, dtype=F64) / 127.5 - 1.0
    log_p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale))
    assert float(torch.exp(log_p).sum()) == pytest.approx(1.0, abs=1e-6)


def test_interpolated_variance_endpoints():
    schedule = build_schedule("linear")
    t = torch.tensor([0, 1, 500, 999])
    log_beta, log_beta_tilde = step_log_variance_bounds(schedule, t)
    assert float(log_beta_tilde[0]) == float(log_beta_tilde[1])  # beta-tilde_0 = 0 is clipped to beta-tilde_1
    v = torch.ones(4, 1, dtype=F64)
    torch.testing.assert_close(interpolated_log_variance(v, log_beta, log_beta_tilde)[:, 0], log_beta)
    torch.testing.assert_close(interpolated_log_variance(-v, log_beta, log_beta_tilde)[:, 0], log_beta_tilde)


def test_vlb_term_is_zero_for_the_true_posterior():
    """With x0_hat = x0 and Sigma = beta-tilde the model's p(x_{t-1} | x_t) is the true posterior: KL = 0."""
    schedule = build_schedule("linear")
    t = torch.tensor([3, 50, 700])
    generator = torch.Generator().manual_seed(2)
    x0, x_t = torch.randn(2, 3, 2, 4, 4, generator=generator, dtype=F64)
    _, log_beta_tilde = step_log_variance_bounds(schedule, t)
    log_var = log_beta_tilde.reshape(-1, 1, 1, 1).expand_as(x0)
    torch.testing.assert_close(vlb_term(x0, x_t, t, x0, log_var, schedule), torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)
    assert bool((vlb_term(x0, x_t, t, x0 + 0.1, log_var, schedule) > 0).all())


def test_decoder_term_at_t0_is_the_discretized_nll_in_bits():
    schedule = build_schedule("linear")
    t = torch.tensor([0])
    x0 = (torch.randint(0, 256, (1, 3, 4, 4), generator=torch.Generator().manual_seed(3)).to(F64) / 127.5) - 1
    x_t = math.sqrt(float(schedule.alphas_cumprod[0])) * x0
    log_var = torch.full_like(x0, -9.0)
    expected_mean = x0  # x0_hat = x0 gives the posterior mean into the clean endpoint: x0 itself
    nll = -discretized_gaussian_log_likelihood(x0, expected_mean, torch.full_like(x0, -4.5)).mean() / math.log(2)
    assert float(vlb_term(x0, x_t, t, x0, log_var, schedule)) == pytest.approx(float(nll), rel=1e-9)


def test_hybrid_loss_gradients_reach_the_variance_only_through_the_vlb():
    schedule = build_schedule("linear")
    generator = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 2, 3, 4, 4, generator=generator)
    t = torch.tensor([10, 600])
    alpha, sigma = schedule.alpha_sigma(t.to(F64))
    x_t = alpha.float().reshape(-1, 1, 1, 1) * x0 + sigma.float().reshape(-1, 1, 1, 1) * eps
    mean_out = (eps + 0.05 * torch.randn(eps.shape, generator=generator)).requires_grad_(True)
    v_out = torch.zeros_like(eps, requires_grad=True)
    loss = hybrid_loss(torch.cat([mean_out, v_out], 1), x0, eps, x_t, t, schedule, "eps")
    loss.sum().backward()
    # The mean's gradient is exactly the simple loss's: the vlb sees a detached mean.
    expected_mean_grad = 2 * (mean_out.detach() - training_target(x0, eps, 0, 0, "eps")) / mean_out[0].numel()
    torch.testing.assert_close(mean_out.grad, expected_mean_grad, rtol=1e-4, atol=1e-7)
    assert float(v_out.grad.abs().sum()) > 0
