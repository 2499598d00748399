"""Gaussian mixtures, whose exact denoiser is known in closed form: a ground truth for samplers.

For x0 ~ sum_k w_k N(mu_k, C_k) and x_t = alpha x0 + sigma eps, x_t is itself a mixture of
N(alpha mu_k, alpha^2 C_k + sigma^2 I), and by Gaussian conditioning

    E[x0 | x_t] = sum_k p(k | x_t) (mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^{-1} (x_t - alpha mu_k)).

A sampler driven by this denoiser must reproduce the mixture; how far it lands from it
measures the sampler's own error (a benchmark) or a bug (a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cascade.diffusion.schedules import NoiseSchedule
from cascade.sampling.denoiser import Denoiser

F64 = torch.float64


@dataclass(frozen=True)
class GaussianMixture:
    """``weights`` [K] (summing to 1), ``means`` [K, D], ``covariances`` [K, D, D], all float64."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n, D] float64 draws."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances)[component]  # [n, D, D]
        z = torch.randn(n, self.dim, 1, generator=generator, dtype=F64)
        return self.means[component] + (chol @ z).squeeze(-1)

    def mean(self) -> torch.Tensor:
        """[D] the mixture's mean."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """[D, D] the mixture's covariance, sum_k w_k (C_k + mu_k mu_k^T) - m m^T."""
        second = self.covariances + self.means[:, :, None] * self.means[:, None, :]
        m = self.mean()
        return torch.einsum("k,kij->ij", self.weights, second) - torch.outer(m, m)

    def posterior_mean(self, x_t: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """E[x0 | x_t] [N, D] for x_t [N, D] at one noise level, in float64."""
        x = x_t.to(F64)
        eye = torch.eye(self.dim, dtype=F64)
        marginal_cov = alpha**2 * self.covariances + sigma**2 * eye  # [K, D, D]
        precision = torch.linalg.inv(marginal_cov)
        diff = x[:, None, :] - alpha * self.means[None]  # [N, K, D]
        maha = torch.einsum("nki,kij,nkj->nk", diff, precision, diff)
        log_det = torch.logdet(marginal_cov)  # [K]
        log_resp = torch.log(self.weights) - 0.5 * (maha + log_det + self.dim * math.log(2 * math.pi))
        resp = torch.softmax(log_resp, dim=1)  # [N, K]
        gain = alpha * self.covariances @ precision  # [K, D, D]
        component_means = self.means[None] + torch.einsum("kij,nkj->nki", gain, diff)  # [N, K, D]
        return torch.einsum("nk,nki->ni", resp, component_means)

    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        """The exact denoiser for data from this mixture under ``schedule``; expects one t per batch."""

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha, sigma = schedule.alpha_sigma(t[:1])
            return self.posterior_mean(x_t, float(alpha), float(sigma)).to(x_t.dtype)

        return denoise


def example_mixture() -> GaussianMixture:
    """A 2-D mixture of three unequal, correlated components, with values of order 1."""
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    means = torch.tensor([[-0.6, -0.3], [0.7, 0.4], [0.0, 0.9]], dtype=F64)
    covariances = torch.tensor(
        [
            [[0.04, 0.015], [0.015, 0.02]],
            [[0.02, -0.01], [-0.01, 0.03]],
            [[0.01, 0.0], [0.0, 0.005]],
        ],
        dtype=F64,
    )
    return GaussianMixture(weights, means, covariances)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 128, seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance between point sets a [N, D] and b [N, D] (equal N).

    Averages, over random unit directions, the 1-D W1 distance of the projections (sorted matching).
    """
    if a.shape != b.shape:
        raise ValueError(f"point sets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=F64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa = torch.sort(a.to(F64) @ directions, dim=0).values
    pb = torch.sort(b.to(F64) @ directions, dim=0).values
    return float((pa - pb).abs().mean())
