"""The context refiner (``unet.text_context_layers``): transformer layers over the text context,
trained with the stage. The identity at first, blind to padding, and end to end from a release
without it: trained, exported, rendered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CASCADE, ROOT, retrained_base_cascade, run_command, tiny_config
from stages.context_refiner import ContextRefiner

REFINED = "stage: {unet: {text_word_dim: 32, text_context_layers: 2}}\n"


def _trained_refiner(dim: int = 32, layers: int = 2, seed: int = 0) -> ContextRefiner:
    """A refiner whose zero-initialised projections have been given random weights (as training would)."""
    torch.manual_seed(seed)
    refiner = ContextRefiner(dim, layers, head_dim=16)
    with torch.no_grad():
        for layer in refiner.layers:
            layer.attention_out.weight.normal_(0, 0.2)
            layer.mlp[2].weight.normal_(0, 0.2)
    return refiner


def test_a_new_refiner_is_the_identity() -> None:
    refiner = ContextRefiner(32, 2, head_dim=16)
    tokens = torch.randn(3, 7, 32)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
    torch.testing.assert_close(refiner(tokens, mask), tokens, rtol=0, atol=0)


def test_padding_does_not_reach_the_real_tokens() -> None:
    refiner = _trained_refiner()
    tokens = torch.randn(2, 6, 32)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    other = tokens.clone()
    other[:, 4:] = torch.randn(2, 2, 32) * 10  # different padding
    out, out_other = refiner(tokens, mask), refiner(other, mask)
    torch.testing.assert_close(out[:, :4], out_other[:, :4])
    # and the real tokens come out the same as the unpadded sequence would
    torch.testing.assert_close(out[:, :4], refiner(tokens[:, :4], None), rtol=1e-5, atol=1e-5)


def test_every_token_sees_the_others() -> None:
    """Bidirectional: changing the last real token changes the first token's state (a causal
    encoder's first state would not move)."""
    refiner = _trained_refiner()
    tokens = torch.randn(1, 5, 32)
    changed = tokens.clone()
    changed[:, 4] = torch.randn(32)  # (a constant shift would vanish in the layer norm)
    assert not torch.allclose(refiner(tokens)[:, 0], refiner(changed)[:, 0])


def test_a_refiner_needs_a_layer_and_a_fitting_head_dim() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        ContextRefiner(32, 0, head_dim=16)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        ContextRefiner(32, 1, head_dim=12)


def test_a_refiner_without_text_tokens_is_refused() -> None:
    from stages.unet import UNetConfig

    with pytest.raises(ValueError, match="needs text tokens"):
        UNetConfig(text_dim=None, text_context_layers=2)
    with pytest.raises(ValueError, match="0 or more"):
        UNetConfig(text_dim=32, text_context_layers=-1)


def test_the_diffusion_loss_reaches_every_refiner_weight() -> None:
    """Through the spatial attention's context keys and values; the zero-initialised output
    projections get gradients at once, the rest as soon as those have moved."""
    from stages.conditioning import Conditioning
    from stages.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(base_channels=16, channel_mults=(1, 2), res_blocks=(1, 1), attention_levels=(False, True),
                        head_dim=16, text_dim=32, context_dim=32, text_context_layers=2)
    network = UNet(config)
    with torch.no_grad():  # as after some training: attention and output layers no longer zero
        for name, parameter in network.named_parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0, 0.1)
    cond = Conditioning(text_tokens=torch.randn(2, 6, 32), text_mask=torch.tensor([[True] * 6, [True] * 3 + [False] * 3]))
    network(torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]), cond).square().mean().backward()
    for name, parameter in network.text_refiner.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_init_from_a_release_without_a_refiner_is_that_release(tiny_cascade: Path, tmp_path: Path) -> None:
    from cascade.release import load_stage
    from cascade.text import CachedTextEncoder, load_text_encoder
    from cascade.training.diffusion_task import DiffusionTask, text_conditioning
    from cascade.training.runner import load_train_config

    config = tiny_config(tmp_path / "base.yaml", "tiny-base16", tiny_cascade.parent / "shards", tiny_cascade / "clip",
                         extra=f"init_from: {tiny_cascade / 'base'}\n{REFINED}")
    task = DiffusionTask(load_train_config("base", config))
    assert task.module.network.text_refiner is not None
    shipped = load_stage(tiny_cascade / "base")
    encoder = CachedTextEncoder(load_text_encoder(f"clip:local-dir:{tiny_cascade / 'clip'}"))
    cond = text_conditioning(encoder, ["a red cube on the grass", "two blue stars left of a green sphere at night"],
                             torch.float32)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(task.module.network(x, t, cond), shipped.network(x, t, cond), rtol=0, atol=0)


def test_a_refining_base_trains_exports_and_renders(tiny_cascade: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cascade.release import load_stage

    release = retrained_base_cascade(tiny_cascade, tmp_path, REFINED)
    stage = load_stage(release / "base")
    assert stage.config.unet.text_context_layers == 2 and stage.network.text_refiner is not None
    weights = load_file(str(release / "base" / "ema.safetensors"))
    assert weights["network.text_refiner.layers.1.mlp.2.weight"].shape == (32, 128)
    out = tmp_path / "refined.png"
    run_command(CASCADE + ["render", "--checkpoint", str(release), "--prompt", "a red cube on the grass",
                           "--size", "16", "--out", str(out)], ROOT)
    assert out.stat().st_size > 0
