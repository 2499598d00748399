"""Noise correlated across the frames of a clip: the "mixed" video noise prior of Ge et al. 2023
("Preserve Your Own Correlation", PYoCo, section 3.2).

A video stage started from an image stage denoises each frame much as the image stage would; from
independent noise per frame, the frames of a clip then guess independent layouts at high noise
levels and the objects jump from frame to frame. With noise whose frames share a component, every
frame starts from nearly the same guess, and the temporal layers only have to learn how the
frames differ. Every frame's noise is still N(0, I), so each frame sees the noise its image stage
was trained on.
"""

from __future__ import annotations

import torch


def check_frame_correlation(correlation: float) -> float:
    """``correlation`` if it is in [0, 1); raises ValueError otherwise (1 would make every frame the same)."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"frame_noise_correlation must be in [0, 1), got {correlation}")
    return correlation


def mix_frame_noise(noise: torch.Tensor, correlation: float) -> torch.Tensor:
    """Independent N(0, I) noise of clips [B, F, ...] -> noise of the same shape whose frames have
    correlation ``correlation`` at every position: covariance (1 - rho) I + rho 11^T over frames.

    The linear map is the symmetric square root of that covariance applied to the draws, so a
    sample's mixed noise depends only on its own draws (per-sample generators keep working):
    ``sqrt(1 - rho) z_f + (sqrt(1 - rho + rho F) - sqrt(1 - rho)) mean_f(z)``.
    Images [B, C, H, W] (and clips with rho = 0 or one frame) are returned unchanged.
    """
    check_frame_correlation(correlation)
    if noise.ndim != 5 or correlation == 0.0 or noise.shape[1] == 1:
        return noise
    frames = noise.shape[1]
    own = (1.0 - correlation) ** 0.5
    shared = (1.0 - correlation + correlation * frames) ** 0.5 - own
    return own * noise + shared * noise.mean(dim=1, keepdim=True)
