"""The frame-change loss of video stages (``frame_change_weight``): what only the motion can get wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cascade.diffusion.losses import frame_change_loss, simple_loss
from cascade.diffusion.parametrization import to_x0, training_target
from cascade.stage import DiffusionStage
from stages.conditioning import Conditioning
from stages.registry import PRESETS

SHAPE = (3, 4, 3, 8, 8)  # [B, F, C, H, W]


def _draws(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=generator) * 2 - 1
    noise = torch.randn(SHAPE, generator=generator)
    alpha = torch.tensor([0.9, 0.6, 0.2], dtype=torch.float64)
    return x0, noise, alpha, (1 - alpha**2).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_an_error_every_frame_shares_costs_nothing_and_an_alternating_one_four_times_its_square(prediction: str) -> None:
    x0, noise, alpha, sigma = _draws()
    shape = (-1, 1, 1, 1, 1)
    target = training_target(x0, noise, alpha.float().reshape(shape), sigma.float().reshape(shape), prediction)
    shared = torch.randn(SHAPE[0], 1, *SHAPE[2:])  # the same error in every frame
    assert torch.allclose(frame_change_loss(target + shared, x0, noise, alpha, sigma, prediction),
                          torch.zeros(SHAPE[0]), atol=1e-6)
    log_snr = (alpha**2 / sigma**2).log()
    assert (simple_loss(target + shared, x0, noise, alpha, sigma, log_snr, prediction) > 0).all()  # the main loss sees it
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 4, 1, 1, 1)
    alternating = frame_change_loss(target + 0.1 * signs, x0, noise, alpha, sigma, prediction)
    torch.testing.assert_close(alternating, torch.full((SHAPE[0],), 4 * 0.1**2))


def test_for_v_prediction_it_is_the_x0_estimates_frame_change_error_over_sigma_squared() -> None:
    x0, noise, alpha, sigma = _draws(1)
    shape = (-1, 1, 1, 1, 1)
    a, s = alpha.float().reshape(shape), sigma.float().reshape(shape)
    x_t = a * x0 + s * noise
    output = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    estimate = to_x0(output, x_t, a, s, "v")  # [B, F, C, H, W]
    change_error = (estimate[:, 1:] - estimate[:, :-1]) - (x0[:, 1:] - x0[:, :-1])
    expected = (change_error**2).mean(dim=(1, 2, 3, 4)) / sigma.float() ** 2
    torch.testing.assert_close(frame_change_loss(output, x0, noise, alpha, sigma, "v"), expected, rtol=1e-4, atol=1e-6)


def test_a_video_stage_adds_it_to_the_loss_of_clips_with_its_weight() -> None:
    weighted = DiffusionStage(replace(PRESETS["tiny-video16"], frame_change_weight=2.0))
    plain = DiffusionStage(replace(PRESETS["tiny-video16"], frame_change_weight=0.0))
    once = DiffusionStage(replace(PRESETS["tiny-video16"], frame_change_weight=1.0))
    plain.load_state_dict(weighted.state_dict())
    for parameter in weighted.parameters():  # zero-initialised layers would hide the temporal ones
        torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(parameter.numel()))
    plain.load_state_dict(weighted.state_dict())
    once.load_state_dict(weighted.state_dict())
    frames = PRESETS["tiny-video16"].frames
    x0 = torch.rand(2, frames, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cond = Conditioning(text_tokens=torch.randn(2, 5, weighted.config.unet.text_dim),
                        text_mask=torch.ones(2, 5, dtype=torch.bool), first_frame=x0[:, 0],
                        video_mask=torch.ones(2, dtype=torch.bool))
    with torch.no_grad():  # the same draws (times, noise, dropout) for all three
        losses = [stage(x0, cond, torch.Generator().manual_seed(4)) for stage in (plain, once, weighted)]
    assert (losses[1] > losses[0]).all()
    torch.testing.assert_close(losses[2] - losses[0], 2 * (losses[1] - losses[0]))  # linear in the weight
    with pytest.raises(ValueError, match="frame_change_weight"):
        replace(PRESETS["tiny-base16"], frame_change_weight=1.0)  # an image stage has no frames to compare
