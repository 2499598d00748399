"""Super-resolution stages that diffuse the residual over the upsampled low-res image (SRDiff)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cascade.diffusion.forward import q_sample
from cascade.diffusion.losses import simple_loss
from cascade.diffusion.parametrization import training_target
from cascade.sampling import sample
from cascade.stage import DiffusionStage, StageConfig
from stages.conditioning import Conditioning
from stages.registry import PRESETS

torch.manual_seed(0)


def _stage(residual_scale: float | None = 0.125) -> DiffusionStage:
    return DiffusionStage(replace(PRESETS["tiny-sr32"], residual_scale=residual_scale)).eval()


def _pair(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-res [B, 3, 32, 32], its area-downsampled low-res [B, 3, 16, 16]) in [-1, 1]."""
    high = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return high, F.interpolate(high, size=16, mode="area")


def _augmented(stage: DiffusionStage, low: torch.Tensor, aug_fraction: float = 0.05) -> Conditioning:
    aug = torch.full((low.shape[0],), stage.aug_time(aug_fraction), dtype=torch.float64)
    generators = [torch.Generator().manual_seed(i) for i in range(low.shape[0])]
    return stage.augmented(Conditioning(low_res=low), aug, generators)


def test_to_image_inverts_to_diffused() -> None:
    stage = _stage()
    high, low = _pair()
    cond = _augmented(stage, low)
    upsampled = stage.upsampled_low_res(low)
    residual = stage.to_diffused(high, upsampled)
    torch.testing.assert_close(residual, (high - upsampled) / 0.125)
    torch.testing.assert_close(stage.to_image(residual, cond), high)
    torch.testing.assert_close(cond.low_res_clean, upsampled)


def test_an_image_stage_leaves_samples_alone() -> None:
    stage = _stage(None)
    high, low = _pair()
    assert not stage.diffuses_residual
    assert stage.to_diffused(high, stage.upsampled_low_res(low)) is high
    assert stage.to_image(high, _augmented(stage, low)) is high


def test_an_untrained_residual_stage_returns_the_upsampled_input_at_full_noise() -> None:
    """The U-Net's output layer starts at zero, so v = 0 and the residual estimate is alpha_T x_T ~ 0:
    the image estimate at the noisiest time is the bicubic upsampling of the low-res input."""
    stage = _stage()
    high, low = _pair()
    cond = _augmented(stage, low)
    x_t = torch.randn(high.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), stage.schedule.t_max, dtype=torch.float64)
    with torch.no_grad():
        estimate = stage.to_image(stage.denoiser(cond)(x_t, t), cond)
    alpha_T = float(stage.schedule.alpha(stage.schedule.t_max))
    torch.testing.assert_close(estimate, stage.upsampled_low_res(low) + 0.125 * alpha_T * x_t)
    assert (estimate - stage.upsampled_low_res(low)).abs().max() < 0.125 * alpha_T * 6


def test_the_training_loss_is_the_simple_loss_of_the_residual() -> None:
    """The stage's loss equals the v-loss computed by hand on (x_hi - up(x_lo)) / scale with the same draws."""
    stage = _stage()
    stage.train()
    high, low = _pair()
    seed = 7
    loss = stage(high, Conditioning(low_res=low), torch.Generator().manual_seed(seed))

    generator = torch.Generator().manual_seed(seed)  # the same draws, in the stage's order
    t = stage.random_times(2, generator)
    noise = torch.randn(high.shape, generator=generator)
    residual = (high - stage.upsampled_low_res(low)) / 0.125
    x_t = q_sample(residual, t, stage.schedule, noise)
    cond = stage._dropped(Conditioning(low_res=low), 2, generator)
    aug_t = stage.random_times(2, generator, stage.config.max_train_aug)
    cond = stage.augmented(cond, aug_t, generator, size=32)
    output = stage.network(x_t, stage.model_time(t), cond)
    alpha, sigma = stage.schedule.alpha_sigma(t)
    expected = simple_loss(output, residual, noise, alpha, sigma, stage.schedule.log_snr(t), "v", "min_snr", 5.0)
    torch.testing.assert_close(loss, expected)
    target = training_target(residual, noise, alpha.float().view(-1, 1, 1, 1), sigma.float().view(-1, 1, 1, 1), "v")
    assert target.abs().mean() > 0.1  # a real target, not zeros


@pytest.mark.parametrize("threshold", ["static", "dynamic"])
def test_thresholds_act_on_the_image_not_the_residual(threshold: str) -> None:
    stage = _stage()
    high, low = _pair()
    cond = _augmented(stage, low)
    noise = torch.randn(high.shape, generator=torch.Generator().manual_seed(2)) * 40  # far out of range
    t = torch.full((2,), 10.0, dtype=torch.float64)
    with torch.no_grad():
        image = stage.to_image(stage.denoiser(cond, threshold=threshold)(noise, t), cond)
        raw = stage.to_image(stage.denoiser(cond)(noise, t), cond)
    assert raw.abs().max() > 1.5
    assert image.abs().max() <= 1.0 + 1e-5


def test_sampling_a_residual_stage_ends_in_the_image_range() -> None:
    stage = _stage()
    high, low = _pair()
    cond = _augmented(stage, low)
    with torch.no_grad():
        residual = sample("dpmpp-2m", stage.denoiser(cond, threshold="dynamic"), torch.randn(high.shape),
                          stage.schedule, 5)
    image = stage.to_image(residual, cond)
    assert image.shape == high.shape and image.abs().max() <= 1.0 + 1e-5


def test_residual_scale_belongs_to_super_resolution_stages() -> None:
    with pytest.raises(ValueError, match="residual_scale"):
        replace(PRESETS["tiny-base16"], residual_scale=0.1)
    with pytest.raises(ValueError, match="residual_scale"):
        replace(PRESETS["tiny-sr32"], residual_scale=0.0)
    assert isinstance(replace(PRESETS["tiny-sr32"], residual_scale=0.5), StageConfig)
