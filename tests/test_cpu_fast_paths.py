"""The CPU fast paths compute what the plain layers compute: fused layer-plus-residual ops
(stages/fused.py), the channels-last GroupNorm backward (stages/group_norm.py), small attention
as matmuls (stages/attention.py) and our C kernels for GroupNorm and SiLU (stages/native.py),
values and gradients against float64 references."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages import fused, native
from stages.attention import attend
from stages.blocks import ResBlock
from stages.group_norm import GroupNorm, modulated_group_norm

CL = torch.channels_last


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def two_threads():
    """Two threads inside the test (the kernels' chunks of samples are sized per thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# -------------------------------------------------------------------------------- fused residual adds


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("overwrite", [False, True])
def test_conv_add_is_conv_plus_residual(dtype: torch.dtype, overwrite: bool) -> None:
    g = seeded()
    conv = nn.Conv2d(16, 24, 3, padding=1).to(dtype).to(memory_format=CL)
    x = torch.randn(2, 16, 12, 12, generator=g).to(dtype).contiguous(memory_format=CL)
    residual = torch.randn(2, 24, 12, 12, generator=g).to(dtype).contiguous(memory_format=CL)
    kept = residual.clone()
    with torch.no_grad():
        expected = conv.double()(x.double()) + residual.double()
        conv.to(dtype)
        out = fused.conv_add(conv, x, residual, overwrite_residual=overwrite)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=3e-2)
    torch.testing.assert_close(out.double(), expected, **tol)
    assert out.is_contiguous(memory_format=CL) and out.dtype == dtype
    if fused.fusion_available():
        # the fused op ran: it writes into the residual only when told to
        assert (out.data_ptr() == residual.data_ptr()) == overwrite
    if not overwrite:
        assert torch.equal(residual, kept)


def test_conv_add_falls_back_where_it_cannot_fuse() -> None:
    """With gradients, or contiguous activations, or inside ``unfused()``: the plain conv and add."""
    g = seeded(1)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 6, 6, generator=g, requires_grad=True)
    residual = torch.randn(2, 8, 6, 6, generator=g)
    out = fused.conv_add(conv, x, residual)
    out.sum().backward()
    assert x.grad is not None and out.grad_fn is not None
    torch.testing.assert_close(out, conv(x) + residual)
    with torch.no_grad(), fused.unfused():
        x_cl = x.detach().contiguous(memory_format=CL)
        torch.testing.assert_close(fused.conv_add(conv, x_cl, residual.contiguous(memory_format=CL)), conv(x_cl) + residual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_add_is_linear_plus_residual(dtype: torch.dtype) -> None:
    g = seeded(2)
    linear = nn.Linear(32, 32).to(dtype)
    x = torch.randn(3, 10, 32, generator=g).to(dtype)
    residual = torch.randn(3, 10, 32, generator=g).to(dtype)
    with torch.no_grad():
        out = fused.linear_add(linear, x, residual)
        expected = F.linear(x.double(), linear.weight.double(), linear.bias.double()) + residual.double()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=3e-2)
    torch.testing.assert_close(out.double(), expected, **tol)


def test_fusion_switch_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_FUSED", "0")
    fused.fusion_available.cache_clear()
    fused._off_by_environment.cache_clear()
    try:
        assert not fused.fusion_available() and fused.switched_off()
    finally:
        monkeypatch.delenv("CASCADE_FUSED")
        fused.fusion_available.cache_clear()
        fused._off_by_environment.cache_clear()
    assert not fused.switched_off()
    with fused.unfused():
        assert fused.switched_off()


def test_weight_caches_are_cleared_after_changes_they_cannot_see() -> None:
    """A change through ``.data`` keeps the version counter: the packed weights are stale until
    ``clear_weight_caches()`` (the documented remedy); changes through the tensor itself are seen."""
    g = seeded(3)
    conv = fused.Conv2d(8, 8, 3, padding=1).to(memory_format=CL).eval()
    x = torch.randn(2, 8, 6, 6, generator=g).contiguous(memory_format=CL)
    with torch.inference_mode():
        conv(x)  # packs the weights
    conv.weight.data.mul_(-1.0)
    with torch.inference_mode():
        if fused.fusion_available():
            assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        fused.clear_weight_caches()
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


# -------------------------------------------------------------------------------- GroupNorm backward


def reference_modulated(x: torch.Tensor, groups: int, weight, bias, scale, shift) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift, written out in float64 on NCHW memory."""
    normed = F.group_norm(x, groups, weight, bias, 1e-6)
    return normed * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


@pytest.mark.parametrize("affine", [True, False])
def test_modulated_group_norm_gradients_on_large_channels_last_maps(affine: bool) -> None:
    """32x32 channels-last maps with gradients take the transpose-free backward: every gradient
    (input, per-sample scale and shift, the norm's weight and bias) equals the float64 reference."""
    g = seeded(3)
    norm = GroupNorm(8, 32, eps=1e-6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(1 + 0.2 * torch.randn(32, generator=g))
            norm.bias.copy_(0.2 * torch.randn(32, generator=g))
    x = torch.randn(3, 32, 32, 32, generator=g) * 2 + 0.7
    scale, shift = 0.3 * torch.randn(3, 32, generator=g), 0.3 * torch.randn(3, 32, generator=g)
    upstream = torch.randn(3, 32, 32, 32, generator=g)

    leaves = [x.contiguous(memory_format=CL), scale.clone(), shift.clone()]
    for t in leaves:
        t.requires_grad_()
    out = modulated_group_norm(leaves[0], norm, leaves[1], leaves[2])
    assert out.is_contiguous(memory_format=CL)
    (out * upstream).sum().backward()

    reference = [t.double().clone().requires_grad_() for t in (x, scale, shift)]
    params = [p.detach().double().clone().requires_grad_() for p in (norm.weight, norm.bias)] if affine else [None, None]
    expected = reference_modulated(reference[0], 8, *params, reference[1], reference[2])
    (expected * upstream.double()).sum().backward()

    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(leaves, reference):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4)
    if affine:
        torch.testing.assert_close(norm.weight.grad.double(), params[0].grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(norm.bias.grad.double(), params[1].grad, rtol=1e-4, atol=1e-3)


def test_group_norm_without_affine_on_large_channels_last_maps() -> None:
    g = seeded(4)
    norm = GroupNorm(4, 16, eps=1e-6, affine=False)
    x = (torch.randn(2, 16, 32, 32, generator=g) * 3 - 1).contiguous(memory_format=CL).requires_grad_()
    x_ref = x.detach().double().contiguous().requires_grad_()
    upstream = torch.randn(2, 16, 32, 32, generator=g)
    (norm(x) * upstream).sum().backward()
    (F.group_norm(x_ref, 4, None, None, 1e-6) * upstream.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_small_attention_with_gradients_matches_sdpa(mask_kind: str | None) -> None:
    """The matmul path (small, CPU, gradients) against scaled_dot_product_attention in float64."""
    g = seeded(5)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(3))
    k, v = torch.cat([k, torch.randn(2, 3, 4, 8, generator=g)], 2), torch.cat([v, torch.randn(2, 3, 4, 8, generator=g)], 2)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
        mask[1, ..., 17:] = False
    elif mask_kind == "additive":
        mask = torch.randn(1, 3, 16, 20, generator=g)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = [t.double().clone().requires_grad_() for t in (q, k, v)]
    out = attend(*ours, mask)
    expected = F.scaled_dot_product_attention(*theirs, attn_mask=None if mask is None else (mask if mask.dtype == torch.bool else mask.double()))
    upstream = torch.randn(out.shape, generator=g)
    (out * upstream).sum().backward()
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)


def test_small_attention_under_autocast_keeps_float32_scores() -> None:
    """Under bf16 autocast the scores and softmax stay float32; the output is bf16 like SDPA's."""
    g = seeded(6)
    q, k, v = (torch.randn(2, 2, 8, 16, generator=g).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", torch.bfloat16):
        out = attend(q, k, v)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


# -------------------------------------------------------------------------------- C kernels

needs_kernels = pytest.mark.skipif(native.library() is None, reason="no C compiler here: the kernels fall back to PyTorch")


def channels_last_bf16(*shape: int, seed: int = 7, scale: float = 2.0, offset: float = 0.5) -> torch.Tensor:
    return (torch.randn(*shape, generator=seeded(seed)) * scale + offset).bfloat16().contiguous(memory_format=CL)


def test_kernels_build_where_a_compiler_exists() -> None:
    if shutil.which(os.environ.get("CC", "cc")):
        assert native.library() is not None


def written_norm_act(x, groups, weight, bias, scale, shift, silu: bool) -> torch.Tensor:
    """act((group_norm(x) * weight + bias) * (1 + scale) + shift) in float64, as written."""
    x = x.double()
    y = F.group_norm(x, groups, weight.double(), bias.double(), 1e-6)
    y = y * (1 + scale.double()[:, :, None, None]) + shift.double()[:, :, None, None]
    return F.silu(y) if silu else y


@needs_kernels
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape", [(3, 40, 9, 7), (2, 64, 16, 16), (5, 64, 64, 64)])
def test_group_norm_act_is_exact_to_bf16_rounding(shape: tuple[int, ...], silu: bool, two_threads: None) -> None:
    """The one-call kernel against float64: within half a bf16 step of the result (2^-8 relative, 8
    significant bits) plus 1e-3 relative for float32 statistics and exp's 3e-6; gains up to 60, so
    normalised values reach SiLU's tails (-100 to 100). The last shape (512 KiB a sample) goes through
    the kernel in chunks of 2, 2 and 1 samples (on two threads)."""
    n, c = shape[:2]
    g = seeded(8)
    x = channels_last_bf16(*shape, scale=3.0, offset=-1.0)
    weight, bias = 30 * torch.rand(c, generator=g) + 1, torch.randn(c, generator=g)
    scale, shift = torch.rand(n, c, generator=g), torch.randn(n, c, generator=g)
    groups = 8 if c == 40 else 32
    out = native.group_norm_act(x, groups, 1e-6, weight, bias, scale, shift, silu)
    expected = written_norm_act(x, groups, weight, bias, scale, shift, silu)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    assert float(expected.abs().max()) > 50
    error = (out.double() - expected).abs()
    bound = expected.abs() * (2**-8 + 1e-3) + 1e-3
    assert bool((error <= bound).all()), float((error - bound).max())


@needs_kernels
def test_group_norm_act_without_affine_or_modulation() -> None:
    x = channels_last_bf16(2, 16, 8, 8)
    out = native.group_norm_act(x, 4, 1e-6)
    torch.testing.assert_close(out.double(), F.group_norm(x.double(), 4, None, None, 1e-6), rtol=1e-2, atol=1e-2)


@needs_kernels
@pytest.mark.parametrize("shape", [(4, 64, 32, 32), (2, 96, 8, 8)])
def test_modulated_group_norm_with_kernels_matches_float64(shape: tuple[int, ...]) -> None:
    """The bf16 inference path (our kernels) against the written formula in float64, SiLU included."""
    norm = GroupNorm(32, shape[1], eps=1e-6)
    g = seeded(9)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(shape[1], generator=g))
        norm.bias.copy_(0.2 * torch.randn(shape[1], generator=g))
    scale, shift = 0.3 * torch.randn(shape[:2], generator=g), 0.3 * torch.randn(shape[:2], generator=g)
    x = channels_last_bf16(*shape, scale=3.0, offset=2.0)
    with torch.inference_mode():
        out = modulated_group_norm(x, norm, scale, shift, silu=True)
        plain = norm(x)
    expected = F.silu(reference_modulated(x.double(), 32, norm.weight.double(), norm.bias.double(), scale.double(), shift.double()))
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(plain.double(), F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6),
                               rtol=2e-2, atol=2e-2)


@needs_kernels
def test_kernels_let_nan_through() -> None:
    """A NaN in the input (a diverged model) makes its group NaN, as PyTorch's GroupNorm does."""
    norm = GroupNorm(4, 16, eps=1e-6)
    x = channels_last_bf16(2, 16, 8, 8)
    x[1, 5, 3, 3] = float("nan")
    with torch.inference_mode():
        out = modulated_group_norm(x, norm, torch.zeros(2, 16), torch.zeros(2, 16), silu=True)
    assert bool(out[1, 4:8].isnan().all()) and not bool(out[0].isnan().any()) and not bool(out[1, :4].isnan().any())


def test_without_kernels_the_same_norm_runs_in_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = GroupNorm(8, 32, eps=1e-6)
    x = channels_last_bf16(2, 32, 32, 32)
    scale, shift = torch.zeros(2, 32), torch.zeros(2, 32)
    with torch.inference_mode():
        fast = modulated_group_norm(x, norm, scale, shift, silu=True)
        monkeypatch.setenv("CASCADE_NATIVE", "0")
        native.library.cache_clear()
        try:
            assert native.library() is None
            slow = modulated_group_norm(x, norm, scale, shift, silu=True)
        finally:
            monkeypatch.delenv("CASCADE_NATIVE")
            native.library.cache_clear()
    torch.testing.assert_close(fast.float(), slow.float(), rtol=2e-2, atol=2e-2)


@needs_kernels
def test_group_norm_act_of_two_parts_in_several_chunks(two_threads: None) -> None:
    """x (48 channels) and extra (16) of 5 samples at 64x64 (512 KiB a sample): chunks of 2, 2 and 1."""
    x, extra = channels_last_bf16(5, 48, 64, 64, seed=15), channels_last_bf16(5, 16, 64, 64, seed=16)
    g = seeded(17)
    weight, bias = 1 + torch.rand(64, generator=g), torch.randn(64, generator=g)
    scale, shift = torch.rand(5, 64, generator=g), torch.randn(5, 64, generator=g)
    together = torch.cat([x, extra], 1).contiguous(memory_format=CL)
    out = native.group_norm_act(x, 16, 1e-6, weight, bias, scale, shift, silu=True, extra=extra)
    expected = written_norm_act(together, 16, weight, bias, scale, shift, silu=True)
    error = (out.double() - expected).abs()
    assert bool((error <= expected.abs() * (2**-8 + 1e-3) + 1e-3).all())


@needs_kernels
def test_norm_parameters_converted_again_after_an_in_place_change() -> None:
    norm = GroupNorm(4, 16, eps=1e-6)
    x = channels_last_bf16(2, 16, 8, 8, seed=18)
    with torch.inference_mode():
        before = norm(x)
    with torch.no_grad():
        norm.weight.mul_(-2.0)
        norm.bias.add_(1.0)
    with torch.inference_mode():
        after = norm(x)
    expected = F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), 1e-6)
    torch.testing.assert_close(after.double(), expected, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(before.double(), expected, rtol=2e-2, atol=2e-2)


@needs_kernels
def test_group_norm_act_of_two_parts_is_the_norm_of_their_concatenation() -> None:
    """x (48 channels) and extra (24) normalised as one 72-channel tensor: groups of 9 straddle the seam."""
    x, extra = channels_last_bf16(2, 48, 8, 8, seed=10), channels_last_bf16(2, 24, 8, 8, seed=11)
    g = seeded(12)
    weight, bias = 1 + torch.rand(72, generator=g), torch.randn(72, generator=g)
    together = torch.cat([x, extra], 1).contiguous(memory_format=CL)
    out = native.group_norm_act(x, 8, 1e-6, weight, bias, silu=True, extra=extra)
    assert torch.equal(out, native.group_norm_act(together, 8, 1e-6, weight, bias, silu=True))
    with pytest.raises(ValueError, match="do not split into 7 groups"):
        native.group_norm_act(x, 7, 1e-6, extra=extra)


def test_conv_of_concat_is_the_conv_of_the_concatenation() -> None:
    conv = nn.Conv2d(40, 16, 1).bfloat16().to(memory_format=CL)
    first, second = channels_last_bf16(2, 24, 8, 8, seed=13), channels_last_bf16(2, 16, 8, 8, seed=14)
    with torch.no_grad():
        expected = F.conv2d(torch.cat([first, second], 1).double(), conv.weight.double(), conv.bias.double())
        out = fused.conv_of_concat(conv, first, second)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=3e-2)


@pytest.mark.parametrize("grad", [False, True])
def test_resblock_reads_the_skip_connection_as_a_concatenation(grad: bool) -> None:
    """ResBlock(x, emb, extra) = ResBlock(cat(x, extra), emb): in inference (the concatenation never
    built) and with gradients (built)."""
    block = ResBlock(48, 32, 20)
    g = seeded(15)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    block = block.bfloat16().to(memory_format=CL)
    x, extra = channels_last_bf16(2, 32, 16, 16, seed=16), channels_last_bf16(2, 16, 16, 16, seed=17)
    emb = torch.randn(2, 20, generator=g).bfloat16()
    with torch.set_grad_enabled(grad):
        split = block(x, emb, extra)
        joined = block(torch.cat([x, extra], 1).contiguous(memory_format=CL), emb)
    torch.testing.assert_close(split.float(), joined.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_small_map_statistics_in_pytorch_are_float32_accurate(autocast: bool) -> None:
    """Without the kernels, small bf16 channels-last maps far from zero mean (mean 8, std 0.5) are
    normalised as accurately as PyTorch's own GroupNorm, under bf16 autocast too."""
    norm = GroupNorm(32, 128, eps=1e-6)
    x = channels_last_bf16(2, 128, 16, 16, seed=18, scale=0.5, offset=8.0)
    with torch.inference_mode(), native.unused(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = norm(x)
    expected = F.group_norm(x.double(), 32, None, None, 1e-6)
    reference = F.group_norm(x, 32, None, None, 1e-6).double()
    ours_error, torch_error = float((out.double() - expected).abs().max()), float((reference - expected).abs().max())
    assert out.is_contiguous(memory_format=CL) and ours_error <= 1.5 * torch_error + 1e-3, (ours_error, torch_error)


def test_trainable_norm_parameters_keep_their_gradients() -> None:
    """With autograd on, an input that needs no gradient still gets a norm whose weight does (a frozen
    encoder in front of a trained layer): the kernels, which have no backward, are not used."""
    norm = GroupNorm(8, 32, eps=1e-6).bfloat16()
    x = channels_last_bf16(2, 32, 8, 8)
    out = norm(x)
    assert out.requires_grad
    out.float().sum().backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None


@needs_kernels
def test_kernel_route_at_batch_one() -> None:
    norm = GroupNorm(32, 64, eps=1e-6)
    x = channels_last_bf16(1, 64, 32, 32, seed=19)
    scale, shift = 0.1 * torch.randn(1, 64, generator=seeded(20)), torch.zeros(1, 64)
    with torch.inference_mode():
        out = modulated_group_norm(x, norm, scale, shift, silu=True)
    expected = F.silu(F.group_norm(x.double(), 32, None, None, 1e-6) * (1 + scale.double()[:, :, None, None]))
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv2d_with_packed_weights_is_nn_conv2d(dtype: torch.dtype) -> None:
    """fused.Conv2d packs its weights once per input shape: the same results as nn.Conv2d at several
    batch sizes and strides, a fresh packing after the weights change in place, and copies still work."""
    import copy

    g = seeded(21)
    for stride in (1, 2):
        ours = fused.Conv2d(24, 16, 3, stride=stride, padding=1)
        plain = nn.Conv2d(24, 16, 3, stride=stride, padding=1)
        plain.load_state_dict(ours.state_dict())
        ours, plain = ours.to(dtype).to(memory_format=CL).eval(), plain.to(dtype).to(memory_format=CL).eval()
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
        with torch.inference_mode():
            for batch in (1, 2, 5, 2):
                x = torch.randn(batch, 24, 12, 12, generator=g).to(dtype).contiguous(memory_format=CL)
                torch.testing.assert_close(ours(x), plain(x), **tol)
        with torch.no_grad():  # in place, as load_state_dict does: the packing must follow
            ours.weight.mul_(-2.0)
            plain.weight.mul_(-2.0)
            torch.testing.assert_close(ours(x), plain(x), **tol)
            torch.testing.assert_close(copy.deepcopy(ours)(x), plain(x), **tol)
