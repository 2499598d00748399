"""Every residual block's scale and shift in one product (stages/modulations.py): the blocks' own layers' results."""

from __future__ import annotations

import pytest
import torch

import stages.unet as unet_module
from stages import fused
from stages.blocks import ResBlock
from stages.conditioning import Conditioning
from stages.modulations import modulations
from stages.unet import UNet, UNetConfig


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), res_blocks=(1, 1), attention_levels=(False, True),
                          head_dim=16, text_dim=24, pooled_dim=24, context_dim=32))
    for block in net.modules():  # the output convolutions start at zero; give every layer weight
        if isinstance(block, ResBlock):
            torch.nn.init.normal_(block.emb.weight, std=0.2)
            torch.nn.init.normal_(block.conv2.weight, std=0.05)
    torch.nn.init.normal_(net.output[2].weight, std=0.05)
    return net.eval()


def test_one_product_gives_every_blocks_own_modulation() -> None:
    net = tiny_unet()
    blocks = net._res_blocks()
    emb = torch.randn(3, net.config.embed_dim)
    with torch.inference_mode():
        batched = modulations(net, blocks, emb)
        assert set(batched) == set(blocks)
        for block in blocks:
            for got, expected in zip(batched[block], block.modulation(emb)):
                torch.testing.assert_close(got, expected)
    with torch.no_grad():  # an in-place change (as load_state_dict makes): the stacked weights follow
        blocks[1].emb.weight.mul_(-2.0)
        blocks[1].emb.bias.add_(0.5)
        again = modulations(net, blocks, emb)
        for got, expected in zip(again[blocks[1]], blocks[1].modulation(emb)):
            torch.testing.assert_close(got, expected)
    assert modulations(net, blocks, emb.requires_grad_()) is None  # with gradients each block runs its own layer


def test_unet_forward_is_the_same_with_and_without_the_stacked_product(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_unet()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0])
    cond = Conditioning(text_tokens=torch.randn(2, 5, 24), pooled=torch.randn(2, 24))
    with torch.inference_mode():
        stacked = net(x, t, cond)
        monkeypatch.setattr(unet_module, "modulations", lambda *args: None)
        per_block = net(x, t, cond)
    assert stacked.abs().max() > 1e-3  # the modulations reach the output
    torch.testing.assert_close(stacked, per_block)


def test_each_block_runs_its_own_layer_where_the_stacked_product_would_bypass_something() -> None:
    """Inside ``unfused()``, or when a block's projection has a hook (or is another layer), the blocks
    run their own layers, so the hook is honoured."""
    net = tiny_unet()
    blocks = net._res_blocks()
    emb = torch.randn(2, net.config.embed_dim)
    with torch.inference_mode():
        assert modulations(net, blocks, emb) is not None
        with fused.unfused():
            assert modulations(net, blocks, emb) is None
        handle = blocks[0].emb.register_forward_hook(lambda module, args, out: out * 0)
        try:
            assert modulations(net, blocks, emb) is None
            x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 700.0])
            cond = Conditioning(text_tokens=torch.randn(2, 5, 24), pooled=torch.randn(2, 24))
            hooked = net(x, t, cond)
        finally:
            handle.remove()
        plain = net(x, t, cond)
    assert not torch.allclose(hooked, plain)  # the hook (zero scale and shift in block 0) took effect
