"""Where each position is, in spatial attention (``unet.attention_positions``): features that mean
the same place at every size, a block that is the identity at first and end to end from a release
without them: trained, exported, rendered."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import CASCADE, ROOT, retrained_base_cascade, run_command, tiny_config
from stages.attention import POSITION_FEATURES, SpatialAttention, position_features

POSITIONED = "stage: {unet: {attention_positions: true}}\n"


def test_position_features_tell_every_place_apart_and_agree_across_sizes() -> None:
    features = position_features(8, 8, torch.device("cpu"))
    assert features.shape == (64, POSITION_FEATURES) and features.abs().max() <= 1
    assert torch.cdist(features, features).add(torch.eye(64) * 9).min() > 0.1  # no two places alike
    # cos(pi * u) of the columns (the feature after the row ones) falls from left to right
    across = features[:8, 3 * POSITION_FEATURES // 4]  # the first row's cells, left to right
    assert bool((across[1:] < across[:-1]).all())
    # the centre of the top-left 2x2 block at 16 px is the top-left cell at 8 px
    fine = position_features(16, 16, torch.device("cpu")).reshape(16, 16, -1)
    coarse = position_features(8, 8, torch.device("cpu")).reshape(8, 8, -1)
    lowest = [0, 6, 12, 18]  # the sin and cos of the lowest frequency, rows and columns
    block_mean = fine[:2, :2].mean((0, 1))[lowest]
    torch.testing.assert_close(block_mean, coarse[0, 0][lowest], atol=0.02, rtol=0)


def test_a_new_position_projection_is_the_identity_and_learns() -> None:
    torch.manual_seed(0)
    plain = SpatialAttention(32, 16, context_dim=8)
    with torch.no_grad():  # as after some training: the output projection no longer zero
        plain.out.weight.normal_(0, 0.1)
    placed = SpatialAttention(32, 16, context_dim=8, positions=True)
    placed.load_state_dict(plain.state_dict(), strict=False)
    x, context = torch.randn(2, 32, 8, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(placed(x, context), plain(x, context), rtol=0, atol=0)
    placed(x, context).square().mean().backward()
    assert placed.positions.weight.grad is not None and placed.positions.weight.grad.abs().sum() > 0
    with torch.no_grad():
        placed.positions.weight.normal_(0, 0.5)
    # once trained, the same features at two places give different outputs: place now matters
    uniform = torch.randn(1, 32, 1, 1).expand(1, 32, 8, 8).contiguous()
    out = placed(uniform, None)
    assert (out[..., 0, 0] - out[..., 7, 7]).abs().max() > 1e-3
    plain_out = plain(uniform, None)
    torch.testing.assert_close(plain_out[..., 0, 0], plain_out[..., 7, 7])


def test_init_from_a_release_without_positions_is_that_release(tiny_cascade: Path, tmp_path: Path) -> None:
    from cascade.release import load_stage
    from cascade.text import CachedTextEncoder, load_text_encoder
    from cascade.training.diffusion_task import DiffusionTask, text_conditioning
    from cascade.training.runner import load_train_config

    config = tiny_config(tmp_path / "base.yaml", "tiny-base16", tiny_cascade.parent / "shards", tiny_cascade / "clip",
                         extra=f"init_from: {tiny_cascade / 'base'}\n{POSITIONED}")
    task = DiffusionTask(load_train_config("base", config))
    assert any(name.endswith("attention.positions.weight") for name, _ in task.module.named_parameters())
    shipped = load_stage(tiny_cascade / "base")
    encoder = CachedTextEncoder(load_text_encoder(f"clip:local-dir:{tiny_cascade / 'clip'}"))
    cond = text_conditioning(encoder, ["a red cube left of a blue star on the grass"], torch.float32)
    x, t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0])
    with torch.no_grad():
        torch.testing.assert_close(task.module.network(x, t, cond), shipped.network(x, t, cond), rtol=0, atol=0)


def test_a_placed_base_trains_exports_and_renders(tiny_cascade: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cascade.release import load_stage

    release = retrained_base_cascade(tiny_cascade, tmp_path, POSITIONED)
    stage = load_stage(release / "base")
    assert stage.config.unet.attention_positions
    weights = load_file(str(release / "base" / "ema.safetensors"))
    placed = [k for k in weights if k.endswith("attention.positions.weight")]
    assert placed and all(weights[k].shape[1] == POSITION_FEATURES for k in placed)
    out = tmp_path / "placed.png"
    run_command(CASCADE + ["render", "--checkpoint", str(release), "--prompt", "a red cube left of a blue star",
                           "--size", "16", "--out", str(out)], ROOT)
    assert out.stat().st_size > 0
