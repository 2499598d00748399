"""Training losses: the simple (eps or v) mean-squared error and min-SNR-gamma weighting.

The learned-variance hybrid loss of improved DDPM lives in :mod:`cascade.diffusion.variance`.
"""

from __future__ import annotations

from typing import Literal

import torch

from cascade.diffusion.parametrization import check_prediction, training_target
from cascade.errors import UserError, choice_error

Weighting = Literal["none", "min_snr"]
WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: [B, ...] -> [B]."""
    return x.flatten(1).mean(dim=1)


def min_snr_weight(log_snr: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", eq. 10 and appendix): the x0-space weight min(SNR, gamma), expressed for the
    space the network predicts in: divided by SNR for eps and by SNR + 1 for v."""
    check_prediction(prediction)
    if not gamma > 0:
        raise UserError(f"min_snr_gamma must be > 0, got {gamma}")
    snr = torch.exp(log_snr)
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def simple_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    log_snr: torch.Tensor,
    prediction: str,
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> torch.Tensor:
    """Per-sample loss [B]: weighted mean squared error between the network output and its target.

    :param output: [B, ...] network output of type ``prediction`` (eps, x0 or v).
    :param x0, noise: [B, ...] the clean sample and the noise that made x_t.
    :param alpha, sigma, log_snr: [B] float64 schedule values at each sample's t.
    """
    if weighting not in WEIGHTINGS:
        raise choice_error("loss weighting", weighting, WEIGHTINGS)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = alpha.to(dtype=x0.dtype, device=x0.device).reshape(shape)
    s = sigma.to(dtype=x0.dtype, device=x0.device).reshape(shape)
    target = training_target(x0, noise, a, s, prediction)
    loss = mean_flat((output.float() - target.float()) ** 2)
    if weighting == "min_snr":
        loss = loss * min_snr_weight(log_snr, prediction, min_snr_gamma).to(loss)
    return loss


def frame_change_loss(output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
                      sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """Per-clip loss [B] on how the error changes from one frame to the next, for clips [B, F, C, H, W].

    The error ``e_f = output_f - target_f`` (in the prediction's own space, as :func:`simple_loss`) is
    compared between consecutive frames: ``mean((e_f - e_{f-1})^2)``. An error every frame shares (the
    background, an object's colour) costs nothing here; an error in where an object is in each frame
    (its motion) does. Every frame of a clip has the same time, so in x0 space this is the same
    loss scaled by the time's weight, as the unweighted main loss is (min-SNR weighting is not
    applied here). Clips of one frame cost 0.
    """
    if x0.ndim != 5:
        raise ValueError(f"frame_change_loss takes clips [B, F, C, H, W], got {tuple(x0.shape)}")
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = alpha.to(dtype=x0.dtype, device=x0.device).reshape(shape)
    s = sigma.to(dtype=x0.dtype, device=x0.device).reshape(shape)
    error = output.float() - training_target(x0, noise, a, s, prediction).float()  # [B, F, C, H, W]
    if x0.shape[1] < 2:
        return error.new_zeros(x0.shape[0])
    return mean_flat((error[:, 1:] - error[:, :-1]) ** 2)

