"""Exact conversions between what a network predicts: eps, x0 or v.

With ``x_t = alpha * x0 + sigma * eps`` and ``alpha^2 + sigma^2 = 1``:

- eps-prediction (Ho et al. 2020): ``x0 = (x_t - sigma * eps) / alpha``;
- v-prediction (Salimans & Ho 2022, "Progressive Distillation", section 4):
  ``v = alpha * eps - sigma * x0``, so ``x0 = alpha * x_t - sigma * v`` and
  ``eps = sigma * x_t + alpha * v``.

``alpha`` and ``sigma`` are tensors broadcastable to x (see :func:`expand_like`) or floats.
"""

from __future__ import annotations

from typing import Literal

import torch

from cascade.errors import choice_error

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")

Coefficient = torch.Tensor | float


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] -> [B, 1, 1, ...] in x's dtype, to broadcast against x [B, ...]."""
    return values.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise choice_error("prediction type", prediction, PREDICTIONS)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    return alpha * eps - sigma * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    return alpha * x_t - sigma * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    return sigma * x_t + alpha * v


def to_x0(
    output: torch.Tensor, x_t: torch.Tensor, alpha: Coefficient, sigma: Coefficient, prediction: str
) -> torch.Tensor:
    """The clean-image estimate implied by a network ``output`` of the given ``prediction`` type."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha, sigma)
    if prediction == "v":
        return x0_from_v(x_t, output, alpha, sigma)
    check_prediction(prediction)
    return output


def from_x0(
    x0: torch.Tensor, x_t: torch.Tensor, alpha: Coefficient, sigma: Coefficient, prediction: str
) -> torch.Tensor:
    """The network output of the given ``prediction`` type that implies the clean estimate ``x0``."""
    if prediction == "eps":
        return eps_from_x0(x_t, x0, alpha, sigma)
    if prediction == "v":
        return v_from_x0_eps(x0, eps_from_x0(x_t, x0, alpha, sigma), alpha, sigma)
    check_prediction(prediction)
    return x0


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient, prediction: str) -> torch.Tensor:
    """What a network of the given ``prediction`` type should output for (x0, eps)."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    check_prediction(prediction)
    return x0
