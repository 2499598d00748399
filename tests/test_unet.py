"""The U-Net: shapes of every variant, what must hold exactly (temporal layers start as the identity,
padding tokens are invisible, the doubled guidance batch is two forwards, checkpointing changes
nothing), and that the fast paths (bf16, channels-last, the small-map GroupNorm) agree with fp32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade.device import autocast, fast_dtype, prepare_for_inference, to_channels_last
from stages.blocks import ResBlock
from stages.group_norm import GroupNorm
from stages.conditioning import Conditioning
from stages.unet import UNet, UNetConfig

TEXT_DIM, POOLED_DIM, L = 24, 16, 6


def config(**overrides) -> UNetConfig:
    base = dict(base_channels=32, channel_mults=(1, 2), res_blocks=(1, 1), attention_levels=(False, True),
                head_dim=16, text_dim=TEXT_DIM, pooled_dim=POOLED_DIM, context_dim=32)
    base.update(overrides)
    return UNetConfig(**base)


def perturbed(model: nn.Module, seed: int = 0, scale: float = 0.05, skip: tuple[str, ...] = ()) -> nn.Module:
    """Every parameter (including the zero-initialised outputs) plus noise, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(s in name for s in skip):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def conditioning(batch: int, seed: int = 1, lengths: list[int] | None = None, **extra) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [L] * batch
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return Conditioning(text_tokens=torch.randn(batch, L, TEXT_DIM, generator=g), text_mask=mask,
                        pooled=torch.randn(batch, POOLED_DIM, generator=g), **extra)


def inputs(shape: tuple[int, ...], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.rand(shape[0], generator=g) * 999


# ---------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", ["image", "video", "super-resolution", "unclip"])
def test_output_shapes(kind: str) -> None:
    b, f, size = 2, 3, 16
    if kind == "image":
        net, x, cond = UNet(config()), torch.randn(b, 3, size, size), conditioning(b)
    elif kind == "video":
        net, x = UNet(config(temporal=True)), torch.randn(b, f, 3, size, size)
        cond = conditioning(b, video_mask=torch.tensor([True, False]))
    elif kind == "super-resolution":
        net = UNet(config(low_res_channels=3, noise_augmentation=True, attention_levels=(False, False)))
        x = torch.randn(b, 3, 32, 32)
        cond = conditioning(b, low_res=torch.randn(b, 3, 32, 32), aug_level=torch.full((b,), 100.0))
    else:
        net, x = UNet(config(image_embed_dim=20, image_tokens=2)), torch.randn(b, 3, size, size)
        cond = conditioning(b, image_embed=torch.randn(b, 20), drop_image=torch.tensor([False, True]))
    with torch.no_grad():
        out = net(x, torch.rand(b) * 999, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_state_dict_keys_are_those_of_plain_torch_layers() -> None:
    """The fast GroupNorm is a drop-in nn.GroupNorm: same keys, same results, loads either way."""
    norm, plain = GroupNorm(8, 64, eps=1e-6), nn.GroupNorm(8, 64, eps=1e-6)
    perturbed(plain)
    norm.load_state_dict(plain.state_dict())
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(norm(x), plain(x))
    keys = set(UNet(config()).state_dict())
    assert {"down.0.res.norm2.weight", "down.0.res.emb.weight", "down.2.attention.qkv.weight", "output.0.bias"} <= keys


# ------------------------------------------------------------------------- exact properties


def _repeat(cond: Conditioning, frames: int, index: slice = slice(None)) -> Conditioning:
    """The text conditioning of samples ``index``, each repeated for its ``frames`` frames."""

    def rep(v: torch.Tensor | None) -> torch.Tensor | None:
        return None if v is None else v[index].repeat_interleave(frames, dim=0)

    return Conditioning(text_tokens=rep(cond.text_tokens), text_mask=rep(cond.text_mask), pooled=rep(cond.pooled))


@pytest.mark.parametrize("frame_position", [False, True])
def test_temporal_layers_start_as_the_identity(frame_position: bool) -> None:
    """An image U-Net's weights (all perturbed) loaded into a video U-Net: each frame comes out as the
    image U-Net's output for that frame. The temporal layers' zero-initialised outputs (and frame
    positions) make them identities, whatever their other weights (perturbed too)."""
    image = perturbed(UNet(config())).eval()
    video = UNet(config(temporal=True, temporal_frame_position=frame_position)).eval()
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected and missing and all("temporal" in k for k in missing)
    assert any("temporal_frame_embed" in k for k in missing) == frame_position
    zero_outputs = (".temporal_conv.conv.", ".temporal_attention.out.", "temporal_frame_embed")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in video.named_parameters():
            if "temporal" in name and not any(z in name for z in zero_outputs):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    b, f = 2, 4
    x, t = inputs((b, f, 3, 16, 16))
    cond = conditioning(b, lengths=[L, 3])
    with torch.no_grad():
        clip = video(x, t, cond)  # [B, F, 3, H, W]
        frames = image(x.flatten(0, 1), t.repeat_interleave(f), _repeat(cond, f))  # [B*F, 3, H, W]
    assert clip.shape == x.shape
    torch.testing.assert_close(clip.flatten(0, 1), frames, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frame_position", [False, True])
def test_video_mask_false_passes_images_through_unchanged_once_trained(frame_position: bool) -> None:
    """With trained (non-zero) temporal layers, a sample flagged as images gets per-frame spatial outputs."""
    video = perturbed(UNet(config(temporal=True, temporal_frame_position=frame_position))).eval()
    f = 3
    x, t = inputs((2, f, 3, 16, 16))
    cond = conditioning(2, lengths=[L, 4], video_mask=torch.tensor([True, False]))
    with torch.no_grad():
        out = video(x, t, cond)
        alone = video(x[1], t[1:].repeat(f), _repeat(cond, f, slice(1, 2)))  # 4-D: no temporal mixing
        mixed = video(x[:1], t[:1], _repeat(cond, 1, slice(0, 1)))
    torch.testing.assert_close(out[1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:1], mixed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], video(x[0], t[:1].repeat(f), _repeat(cond, f, slice(0, 1))), atol=1e-3)


def test_frame_positions_tell_identical_frames_apart_whatever_the_clip_length() -> None:
    """One frame repeated through a U-Net whose frame mixing is still off (zero temporal outputs):
    only the frame positions can make its frames differ, and frame k comes out the same in a clip
    of 3 frames and of 5. A sample flagged as images gets no positions."""
    net = UNet(config(temporal=True, temporal_frame_position=True))
    net = perturbed(net, skip=(".temporal_conv.conv.", ".temporal_attention.out.")).eval()
    frame, t = inputs((1, 3, 16, 16))
    with torch.no_grad():
        short = net(frame[:, None].expand(1, 3, 3, 16, 16), t, conditioning(1))[0]  # [3, 3, H, W]
        long = net(frame[:, None].expand(1, 5, 3, 16, 16), t, conditioning(1))[0]
        still = net(frame[:, None].expand(1, 5, 3, 16, 16), t, conditioning(1, video_mask=torch.tensor([False])))[0]
    for k in range(1, 5):
        assert not torch.allclose(long[k], long[k - 1], atol=1e-3)
        torch.testing.assert_close(still[k], still[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(long[:3], short, rtol=1e-5, atol=1e-5)


def test_text_padding_does_not_change_the_output() -> None:
    """Tokens masked out (whatever their values) are invisible: a prompt padded to more tokens with
    random garbage gives the same output as the prompt alone."""
    net = perturbed(UNet(config())).eval()
    x, t = inputs((2, 3, 16, 16))
    cond = conditioning(2, lengths=[4, 2])
    g = torch.Generator().manual_seed(9)
    garbage = torch.randn(2, 5, TEXT_DIM, generator=g)
    padded = Conditioning(text_tokens=torch.cat([cond.text_tokens, garbage], 1),
                          text_mask=torch.cat([cond.text_mask, torch.zeros(2, 5, dtype=torch.bool)], 1), pooled=cond.pooled)
    changed = Conditioning(text_tokens=torch.where(cond.text_mask[..., None], cond.text_tokens, 100.0),
                           text_mask=cond.text_mask, pooled=cond.pooled)
    with torch.no_grad():
        ref = net(x, t, cond)
        torch.testing.assert_close(net(x, t, padded), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x, t, changed), ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(x, t, conditioning(2, lengths=[6, 6])), ref, atol=1e-3)  # the mask matters


def test_word_embeddings_start_at_zero_then_steer_the_output() -> None:
    """``text_word_dim``: a U-Net reading the encoder's word embeddings computes exactly what the same
    U-Net without them does until its zero-initialised projection learns; then the words change the
    output, a dropped prompt ignores them, and a call without them is an error."""
    plain = perturbed(UNet(config())).eval()
    words_net = UNet(config(text_word_dim=12)).eval()
    missing, _ = words_net.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("text_words.") for k in missing)
    x, t = inputs((2, 3, 16, 16))
    g = torch.Generator().manual_seed(5)
    cond = conditioning(2, lengths=[5, 3], text_words=torch.randn(2, L, 12, generator=g))
    other = Conditioning(**{**cond.__dict__, "text_words": torch.randn(2, L, 12, generator=g)})
    dropped = [Conditioning(**{**c.__dict__, "drop_text": torch.ones(2, dtype=torch.bool)}) for c in (cond, other)]
    with torch.no_grad():
        torch.testing.assert_close(words_net(x, t, cond), plain(x, t, cond), rtol=0, atol=0)
        perturbed(words_net, seed=3, skip=tuple(k for k in words_net.state_dict() if not k.startswith("text_words.")))
        assert not torch.allclose(words_net(x, t, cond), words_net(x, t, other), atol=1e-3)
        torch.testing.assert_close(words_net(x, t, dropped[0]), words_net(x, t, dropped[1]), rtol=0, atol=0)
        with pytest.raises(ValueError, match="word embeddings"):
            words_net(x, t, conditioning(2))
    fresh = UNet(config(text_word_dim=12))
    fresh.load_state_dict(plain.state_dict(), strict=False)  # trained elsewhere, zero word projection
    fresh(x, t, cond).square().mean().backward()
    assert float(fresh.text_words[1].weight.grad.abs().sum()) > 0  # the zero start learns


def test_guidance_batch_equals_two_separate_forwards() -> None:
    """[cond; uncond] in one batched forward is the conditional and the unconditional forward."""
    net = perturbed(UNet(config(image_embed_dim=20, image_tokens=2))).eval()
    x, t = inputs((2, 3, 16, 16))
    cond = conditioning(2, lengths=[5, 3], image_embed=torch.randn(2, 20, generator=torch.Generator().manual_seed(4)))
    uncond = Conditioning(**{**cond.__dict__, "drop_text": torch.ones(2, dtype=torch.bool),
                             "drop_image": torch.ones(2, dtype=torch.bool)})
    with torch.no_grad():
        both = net(torch.cat([x, x]), torch.cat([t, t]), cond.doubled_for_guidance())
        torch.testing.assert_close(both[:2], net(x, t, cond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(both[2:], net(x, t, uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both[:2], both[2:], atol=1e-3)


@pytest.mark.parametrize("temporal", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(temporal: bool) -> None:
    plain = perturbed(UNet(config(temporal=temporal))).train()
    checkpointed = UNet(config(temporal=temporal, gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = inputs((2, 2, 3, 16, 16) if temporal else (2, 3, 16, 16))
    cond = conditioning(2, lengths=[L, 2])
    grads = []
    for net in (plain, checkpointed):
        net.zero_grad()
        out = net(x, t, cond)
        (out.square().mean() + out.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


# -------------------------------------------------------------------------------- fast paths


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 64, 8, 8), (2, 96, 16, 16), (2, 64, 32, 32)])
def test_group_norm_channels_last_matches_the_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Channels-last maps (small ones through NCHW, 32x32 through the transpose-free backward): values,
    gradients and memory format as nn.GroupNorm; in bf16 the weights' gradient is checked against the
    float64 one (two bf16 computations of a sum of 2,048 products can differ by more than either errs)."""
    norm = perturbed(GroupNorm(32, shape[1], eps=1e-6)).to(dtype)
    reference = nn.GroupNorm(32, shape[1], eps=1e-6).to(dtype)
    reference.load_state_dict(norm.state_dict())
    exact = nn.GroupNorm(32, shape[1], eps=1e-6).double()
    exact.load_state_dict({k: v.double() for k, v in norm.state_dict().items()})
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 + 1).to(dtype)
    x_cl = to_channels_last(x).requires_grad_()
    x_ref = x.clone().requires_grad_()
    y, y_ref = norm(x_cl), reference(x_ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    (exact(x.double()) * w.double()).sum().backward()
    torch.testing.assert_close(x_cl.grad, x_ref.grad, **tol)
    torch.testing.assert_close(norm.weight.grad.double(), exact.weight.grad, **{**tol, "atol": tol["atol"] * 25})
    ours, theirs = (norm.weight.grad.double() - exact.weight.grad).abs().max(), (reference.weight.grad.double() - exact.weight.grad).abs().max()
    assert ours <= 1.5 * theirs + 1e-4  # no worse than PyTorch's own bf16 GroupNorm


@pytest.mark.parametrize("channels_last", [False, True])
def test_resblock_inference_and_training_paths_agree(channels_last: bool) -> None:
    """The in-place (no-grad) forward and the autograd forward compute the same block."""
    block = perturbed(ResBlock(32, 64, 40)).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 40)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), to_channels_last(x)
    with torch.inference_mode():
        fast = block(x, emb)
    torch.testing.assert_close(fast, block(x, emb), rtol=1e-6, atol=1e-6)
    # the folded modulation is the written formula: norm2(h) * (1 + scale) + shift
    with torch.no_grad():
        h = block.conv1(F.silu(block.norm1(x)))
        scale, shift = block.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(block.norm2(h) * (1 + scale) + shift)
        torch.testing.assert_close(fast, block.skip(x) + block.conv2(h), rtol=1e-5, atol=1e-5)


def test_fast_dtype_is_never_float16() -> None:
    assert fast_dtype("cpu") in (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("mode", ["bf16 weights, channels-last", "autocast, channels-last"])
def test_fast_path_matches_float32_within_bf16_tolerance(mode: str) -> None:
    """The inference path (bf16 weights or autocast, channels-last) against the fp32 NCHW forward,
    on a base-like U-Net with every weight perturbed and the attention path at 16 and 8 px."""
    cfg = config(channel_mults=(1, 2, 3), res_blocks=(1, 1, 1), attention_levels=(False, True, True))
    net = perturbed(UNet(cfg), scale=0.03).eval()
    x, t = inputs((2, 3, 32, 32))
    cond = conditioning(2, lengths=[L, 3])
    with torch.no_grad():
        reference = net(x, t, cond)
    fast = copy.deepcopy(net)
    with torch.inference_mode():
        if mode.startswith("bf16"):
            out = prepare_for_inference(fast, dtype=torch.bfloat16)(to_channels_last(x), t, cond)
            assert out.dtype == torch.bfloat16
        else:
            fast = fast.to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fast(to_channels_last(x), t, cond)
    assert relative_error(out, reference) < 3e-2
    with autocast("cpu"):
        pass  # the helper is a valid context on any machine


def test_video_channels_last_matches_nchw_in_float32() -> None:
    """The temporal layers' channels-last route (Conv3d over the frames of a channels-last view)."""
    net = perturbed(UNet(config(temporal=True))).eval()
    x, t = inputs((2, 4, 3, 16, 16))
    cond = conditioning(2, lengths=[L, 3], video_mask=torch.tensor([True, False]))
    with torch.no_grad():
        reference = net(x, t, cond)
        fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
        out = fast(x.flatten(0, 1).contiguous(memory_format=torch.channels_last).reshape(x.shape), t, cond)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
