"""A video stage given its first frame (``unet.first_frame_conditioning``): what its input holds,
and that one initialised from an image release computes the image stage at first."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cascade.errors import UserError
from cascade.stage import DiffusionStage, StageConfig
from cascade.training.diffusion_task import initialise_from_release
from stages.conditioning import Conditioning
from stages.registry import PRESETS
from stages.unet import FIRST_FRAME_CHANNELS, UNet


def test_the_first_frame_reaches_every_frame_of_clips_only() -> None:
    first = torch.randn(2, 3, 8, 8)
    like = torch.zeros(2 * 4, 3, 8, 8)
    cond = Conditioning(first_frame=first, video_mask=torch.tensor([True, False]))
    given = UNet._first_frame_input(cond, 2, 4, like, video=True).reshape(2, 4, FIRST_FRAME_CHANNELS, 8, 8)
    for frame in range(4):
        assert torch.equal(given[0, frame, :3], first[0])
    assert torch.equal(given[0, :, 3], torch.ones(4, 8, 8))  # the flag: a frame is given
    assert not given[1].any()  # a sample flagged as an image gets nothing
    assert not UNet._first_frame_input(Conditioning(), 2, 4, like, video=True).any()
    assert not UNet._first_frame_input(cond, 2, 1, like[:2], video=False).any()  # image input


def _release_of(stage: DiffusionStage, folder: Path) -> Path:
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in stage.state_dict().items()}, str(folder / "ema.safetensors"))
    return folder


def test_a_video_stage_from_an_image_release_is_the_image_stage_until_trained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    image_config = replace(PRESETS["tiny-base16"], unet=replace(PRESETS["tiny-base16"].unet, text_dim=None,
                                                                  pooled_dim=None))
    video_config = replace(PRESETS["tiny-video16"], unet=replace(PRESETS["tiny-video16"].unet, text_dim=None,
                                                                   pooled_dim=None))
    image = DiffusionStage(image_config).eval()
    with torch.no_grad():
        for parameter in image.parameters():  # zero-initialised outputs would make any comparison trivial
            parameter.add_(0.05 * torch.randn_like(parameter))
    release = _release_of(image, tmp_path / "base")
    video = DiffusionStage(video_config).eval()
    initialise_from_release(video, release)
    widened = video.network.input_conv.weight
    assert widened.shape[1] == 3 + FIRST_FRAME_CHANNELS
    assert torch.equal(widened[:, :3], image.network.input_conv.weight) and not widened[:, 3:].any()

    clips, t = torch.randn(2, 4, 3, 16, 16), torch.tensor([300.0, 700.0])
    cond = Conditioning(first_frame=torch.randn(2, 3, 16, 16), video_mask=torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        moved = video.network(clips, t, cond)
        per_frame = image.network(clips.flatten(0, 1), t.repeat_interleave(4)).reshape(moved.shape)
    assert moved.abs().mean() > 0.01
    torch.testing.assert_close(moved, per_frame, rtol=1e-4, atol=1e-5)

    # the other way round does not fit: an image stage cannot take a first-frame release
    with pytest.raises(UserError, match="does not fit"):
        initialise_from_release(DiffusionStage(image_config), _release_of(video, tmp_path / "video"))


def test_first_frame_conditioning_needs_temporal_layers() -> None:
    with pytest.raises(ValueError, match="first_frame_conditioning belongs to video U-Nets"):
        replace(PRESETS["tiny-base16"].unet, first_frame_conditioning=True)


def _video_config(**changes) -> StageConfig:
    base = PRESETS["tiny-video16"]
    return replace(base, unet=replace(base.unet, text_dim=None, pooled_dim=None), **changes)


def test_first_frame_residuals_need_a_given_first_frame_and_a_positive_scale() -> None:
    with pytest.raises(ValueError, match="first_frame_residual_scale"):
        _video_config(first_frame_residual_scale=0.0)
    no_frame = PRESETS["tiny-video16"]
    with pytest.raises(ValueError, match="first_frame_residual_scale"):
        replace(no_frame, unet=replace(no_frame.unet, first_frame_conditioning=False), first_frame_residual_scale=0.3)
    with pytest.raises(ValueError, match="first_frame_residual_scale"):
        replace(PRESETS["tiny-base16"], first_frame_residual_scale=0.3)


def test_a_clip_is_diffused_as_its_change_from_the_first_frame_and_mapped_back() -> None:
    stage = DiffusionStage(_video_config(first_frame_residual_scale=0.25))
    clip = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    cond = Conditioning(first_frame=clip[:, 0], video_mask=torch.ones(2, dtype=torch.bool))
    residual = stage.to_diffused(clip, stage.residual_base(cond, clip))
    assert not residual[:, 0].any()  # frame 0 is the given frame itself
    torch.testing.assert_close(residual[:, 2], (clip[:, 2] - clip[:, 0]) / 0.25)
    torch.testing.assert_close(stage.to_image(residual, cond), clip)
    with pytest.raises(UserError, match="image_fraction"):  # a still image has no first frame
        stage.residual_base(Conditioning(), clip[:, 0])


def test_the_residual_stage_trains_on_the_change_with_the_same_draws() -> None:
    """Its loss on a clip is the plain stage's loss on the scaled change from the first frame, with the
    same network, times, noise and dropout, over frames 1.. only: frame 0's change is known (zero)."""
    torch.manual_seed(0)
    frames = 4
    x0_prediction = {"prediction": "x0", "loss_weighting": "none"}  # frame 0's target: the zero change
    residual_stage = DiffusionStage(_video_config(first_frame_residual_scale=0.25, **x0_prediction))
    plain = DiffusionStage(_video_config(**x0_prediction))
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    residual_stage.load_state_dict(plain.state_dict())
    clip = torch.rand(2, frames, 3, 16, 16) * 2 - 1
    cond = Conditioning(first_frame=clip[:, 0], video_mask=torch.ones(2, dtype=torch.bool))
    change = (clip - clip[:, :1]) / 0.25

    def exact_frame_zero(module, inputs, output):  # the plain stage's frame 0 made right: it costs nothing
        return torch.cat([torch.zeros_like(output[:, :1]), output[:, 1:]], dim=1)

    hook = plain.network.register_forward_hook(exact_frame_zero)
    expected = plain(change, cond, torch.Generator().manual_seed(3)) * frames / (frames - 1)
    hook.remove()
    loss = residual_stage(clip, cond, torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(plain(clip, cond, torch.Generator().manual_seed(3)), expected)

    def wrong_frame_zero(module, inputs, output):  # whatever the network says of frame 0 costs nothing
        return torch.cat([output[:, :1] + 100.0, output[:, 1:]], dim=1)

    residual_stage.network.register_forward_hook(wrong_frame_zero)
    torch.testing.assert_close(residual_stage(clip, cond, torch.Generator().manual_seed(3)), loss)


def test_the_residual_stage_denoiser_gives_frame_zero_its_known_change() -> None:
    """Sampling sets frame 0's change estimate to zero exactly, guided or not, thresholded or not."""
    torch.manual_seed(0)
    stage = DiffusionStage(_video_config(first_frame_residual_scale=0.25)).eval()
    with torch.no_grad():
        for parameter in stage.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    clip = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    cond = Conditioning(first_frame=clip[:, 0], video_mask=torch.ones(2, dtype=torch.bool))
    x_t, t = torch.randn(2, 4, 3, 16, 16), torch.full((2,), 0.5, dtype=torch.float64)
    for threshold in (None, "static"):
        with torch.no_grad():
            estimate = stage.denoiser(cond, threshold=threshold)(x_t, t)
        assert not estimate[:, 0].any() and estimate[:, 1:].abs().mean() > 0.01
        assert torch.equal(stage.to_image(estimate, cond)[:, 0], clip[:, 0])
    plain = DiffusionStage(_video_config()).eval()
    assert torch.equal(plain.with_first_frame_known(x_t), x_t)
