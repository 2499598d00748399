"""Noise correlated across the frames of a clip (the PYoCo mixed noise prior) in training and sampling."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cascade.diffusion.forward import q_sample
from cascade.diffusion.frame_noise import mix_frame_noise
from cascade.diffusion.schedules import build_schedule
from cascade.diffusion.losses import simple_loss
from cascade.sampling import sample
from cascade.stage import DiffusionStage
from stages.conditioning import Conditioning
from stages.registry import PRESETS


def _frame_covariance(noise: torch.Tensor) -> torch.Tensor:
    """[N, F, 1, 1, 1] draws -> the empirical [F, F] covariance between frames."""
    flat = noise.flatten(2).squeeze(-1).double()  # [N, F]
    return flat.T @ flat / flat.shape[0]


@pytest.mark.parametrize("rho, frames", [(0.5, 4), (0.8, 8), (0.3, 2)])
def test_the_frame_covariance_is_the_closed_form(rho: float, frames: int) -> None:
    """Cov over frames = (1 - rho) I + rho 11^T: unit variance per frame, rho between any two."""
    draws = torch.randn(200_000, frames, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    expected = (1 - rho) * torch.eye(frames, dtype=torch.float64) + rho * torch.ones(frames, frames, dtype=torch.float64)
    torch.testing.assert_close(_frame_covariance(mix_frame_noise(draws, rho)), expected, atol=0.012, rtol=0)


def test_images_single_frames_and_zero_correlation_pass_unchanged() -> None:
    image = torch.randn(2, 3, 8, 8)
    single = torch.randn(2, 1, 3, 8, 8)
    clip = torch.randn(2, 4, 3, 8, 8)
    assert torch.equal(mix_frame_noise(image, 0.8), image)
    assert torch.equal(mix_frame_noise(single, 0.8), single)
    assert torch.equal(mix_frame_noise(clip, 0.0), clip)
    assert not torch.allclose(mix_frame_noise(clip, 0.8), clip)


def test_a_clips_mixed_noise_depends_on_its_own_draws_only() -> None:
    """Mixing a batch equals mixing each clip alone (per-sample seeds give the same clip in any batch)."""
    clips = torch.randn(3, 4, 3, 8, 8)
    together = mix_frame_noise(clips, 0.7)
    for i in range(3):
        torch.testing.assert_close(together[i:i + 1], mix_frame_noise(clips[i:i + 1], 0.7))


@pytest.mark.parametrize("rho", [-0.1, 1.0, 1.5])
def test_a_correlation_outside_0_1_is_refused(rho: float) -> None:
    with pytest.raises(ValueError, match="frame_noise_correlation must be in"):
        replace(PRESETS["tiny-video16"], frame_noise_correlation=rho)
    with pytest.raises(ValueError, match="frame_noise_correlation must be in"):
        mix_frame_noise(torch.zeros(1, 2, 3, 4, 4), rho)


def test_the_training_loss_uses_the_mixed_noise() -> None:
    """A video stage's loss equals the v-loss computed by hand with the same draws, mixed across frames."""
    stage = DiffusionStage(replace(PRESETS["tiny-video16"], frame_noise_correlation=0.6)).train()
    x0 = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    text = torch.Generator().manual_seed(2)
    cond = Conditioning(text_tokens=torch.randn(2, 5, 32, generator=text), text_mask=torch.ones(2, 5, dtype=torch.bool),
                        pooled=torch.randn(2, 16, generator=text), video_mask=torch.ones(2, dtype=torch.bool))
    loss = stage(x0, cond, torch.Generator().manual_seed(5))

    generator = torch.Generator().manual_seed(5)  # the same draws, in the stage's order
    t = stage.random_times(2, generator)
    noise = mix_frame_noise(torch.randn(x0.shape, generator=generator), 0.6)
    x_t = q_sample(x0, t, stage.schedule, noise)
    dropped = stage._dropped(cond, 2, generator)
    output = stage.network(x_t, stage.model_time(t), dropped)
    alpha, sigma = stage.schedule.alpha_sigma(t)
    expected = simple_loss(output, x0, noise, alpha, sigma, stage.schedule.log_snr(t), "v", "min_snr", 5.0)
    torch.testing.assert_close(loss, expected)

    independent = DiffusionStage(replace(PRESETS["tiny-video16"], frame_noise_correlation=0.0)).train()
    independent.load_state_dict(stage.state_dict())
    assert not torch.allclose(independent(x0, cond, torch.Generator().manual_seed(5)), loss)


@pytest.mark.parametrize("name", ["ddpm", "ddpm-large"])
def test_ancestral_samplers_add_noise_with_the_frame_correlation(name: str) -> None:
    """With x0_hat = 0 every DDPM step is x_s = c x_t + std z: from rho-correlated x_T and z, x keeps
    correlation rho between frames; with independent z it drops below rho."""
    schedule = build_schedule("cosine", 1000)
    draws = torch.randn(40_000, 4, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    start = mix_frame_noise(draws, 0.8)

    def zero_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def correlation(sample_out: torch.Tensor) -> float:
        cov = _frame_covariance(sample_out)
        return float(cov[0, 1] / cov[0, 0])

    def correlation_before_the_clean_step(frame_correlation: float) -> float:
        """The last step returns x0_hat (zeros here): read x after the step before it."""
        states: list[torch.Tensor] = []
        sample(name, zero_denoiser, start, schedule, 6, generator=torch.Generator().manual_seed(3),
               frame_correlation=frame_correlation, callback=lambda i, x, _: states.append(x))
        return correlation(states[-2])

    mixed, plain = correlation_before_the_clean_step(0.8), correlation_before_the_clean_step(0.0)
    assert mixed == pytest.approx(0.8, abs=0.015)
    assert plain < 0.7
