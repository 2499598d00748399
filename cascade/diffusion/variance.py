"""Learned reverse-process variances and the hybrid loss of improved DDPM.

Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", section 3.1:
the network outputs, besides its mean prediction, a value v in [-1, 1] per dimension and
``Sigma = exp(f log beta_t + (1 - f) log beta-tilde_t)`` with f = (v + 1) / 2 (eq. 15);
training uses ``L_hybrid = L_simple + lambda L_vlb`` with lambda = 0.001 and the mean
held fixed (stop-gradient) inside L_vlb (eq. 16).
"""

from __future__ import annotations

import math

import torch

from cascade.diffusion.forward import step_coefficients
from cascade.diffusion.losses import mean_flat, simple_loss
from cascade.diffusion.parametrization import expand_like, to_x0
from cascade.diffusion.schedules import DiscreteSchedule


def interpolated_log_variance(
    v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor
) -> torch.Tensor:
    """log Sigma = f log beta + (1 - f) log beta-tilde with f = (v + 1) / 2.

    :param v: [B, ...] raw network output, meant to lie in [-1, 1].
    :param log_beta, log_beta_tilde: [B] per-sample bounds (float64).
    """
    frac = (v + 1) / 2
    return frac * expand_like(log_beta, v) + (1 - frac) * expand_like(log_beta_tilde, v)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for 8-bit data scaled to [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
    pixel's bin of width 2/255, the end bins reaching to -inf and +inf (Ho et al. 2020, eq. 13).
    Elementwise, in nats; the 256 bins' probabilities sum to 1."""
    inv_std = torch.exp(-log_scale)
    upper = torch.special.ndtr(inv_std * (x - mean + 1.0 / 255))
    lower = torch.special.ndtr(inv_std * (x - mean - 1.0 / 255))
    log_upper = torch.log(upper.clamp(min=1e-12))
    log_one_minus_lower = torch.log((1.0 - lower).clamp(min=1e-12))
    log_delta = torch.log((upper - lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_upper, torch.where(x > 0.999, log_one_minus_lower, log_delta))


def step_log_variance_bounds(schedule: DiscreteSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta_t, log beta-tilde_t) [B] for integer steps t [B]; beta-tilde_0 = 0 is replaced by
    beta-tilde_1, as in improved DDPM, so that its log stays finite."""
    abar = schedule.alphas_cumprod
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta_tilde = schedule.betas * (1 - abar_prev) / (1 - abar)
    beta_tilde = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
    index = t.long()
    return torch.log(schedule.betas[index]), torch.log(beta_tilde[index])


def vlb_term(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    model_log_variance: torch.Tensor,
    schedule: DiscreteSchedule,
) -> torch.Tensor:
    """The variational bound's term L_{t} per sample [B], in bits per dimension.

    For t > 0: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); for t = 0: -log p(x_0 | x_1) under the
    discretised Gaussian decoder. The model's mean is the posterior mean with ``x0_hat`` in place of x_0.
    """
    t = t.to(torch.float64)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma((t - 1).clamp(min=0))
    at_zero = t == 0
    alpha_s = torch.where(at_zero, torch.ones_like(alpha_s), alpha_s)  # the step into x_0 itself
    sigma_s = torch.where(at_zero, torch.zeros_like(sigma_s), sigma_s)
    c = step_coefficients(alpha_t, sigma_t, alpha_s, sigma_s)
    true_mean = expand_like(c.coef_x0, x0) * x0 + expand_like(c.coef_xt, x_t) * x_t
    model_mean = expand_like(c.coef_x0, x0) * x0_hat + expand_like(c.coef_xt, x_t) * x_t
    true_log_variance = torch.log(c.variance.clamp(min=1e-20))
    kl = mean_flat(normal_kl(true_mean, expand_like(true_log_variance, x0), model_mean, model_log_variance))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance))
    return torch.where(at_zero, nll, kl) / math.log(2.0)


def hybrid_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: DiscreteSchedule,
    prediction: str,
    vlb_weight: float = 0.001,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda * T * L_t per sample [B] (T * L_t estimates L_vlb for uniform t).

    :param output: [B, 2C, ...]: the mean prediction (type ``prediction``) and v, concatenated on dim 1.
    :param t: [B] integer steps of a :class:`DiscreteSchedule`.
    """
    mean_output, v = output.chunk(2, dim=1)
    alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
    log_snr = schedule.log_snr(t.to(torch.float64))
    l_simple = simple_loss(mean_output, x0, noise, alpha, sigma, log_snr, prediction)
    x0_hat = to_x0(mean_output.detach(), x_t, expand_like(alpha, x_t), expand_like(sigma, x_t), prediction)
    log_beta, log_beta_tilde = step_log_variance_bounds(schedule, t)
    model_log_variance = interpolated_log_variance(v, log_beta, log_beta_tilde)
    l_t = vlb_term(x0, x_t, t, x0_hat, model_log_variance, schedule)
    return l_simple + vlb_weight * schedule.num_steps * l_t
