"""Nearest 2x upsampling + 3x3 convolution as one low-resolution 2x2 convolution
(stages/upsample_conv.py): the plain pair's results against float64, and its fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages import fused
from stages.blocks import Upsample
from stages.upsample_conv import phase_weights, upsample_conv

CL = torch.channels_last


def reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The plain pair in float64, from the same (rounded) weights and input."""
    up = F.interpolate(x.double(), scale_factor=2.0, mode="nearest")
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(up, conv.weight.double(), bias, padding=1)


def test_phase_weights_are_the_summed_taps() -> None:
    """Phase (0, 0) reads low-res rows/columns i-1 | i with taps 0 | 1 + 2; phase (1, 1) i | i+1 with 0 + 1 | 2."""
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)  # rows [0 1 2], [3 4 5], [6 7 8]
    phases = phase_weights(w)  # [4, 1, 2, 2]: (a, b) = (0, 0), (0, 1), (1, 0), (1, 1)
    torch.testing.assert_close(phases[0, 0], torch.tensor([[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]], dtype=torch.float64))
    torch.testing.assert_close(phases[3, 0], torch.tensor([[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]], dtype=torch.float64))
    torch.testing.assert_close(phases.sum((2, 3)), w.sum((2, 3)).expand(4, 1))  # every phase sums all 9 taps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 8, 8), (3, 24, 4, 6)])
def test_upsample_conv_is_the_plain_pair(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    conv = fused.Conv2d(shape[1], 12, 3, padding=1)
    nn.init.normal_(conv.bias, generator=g)
    conv = conv.to(dtype).to(memory_format=CL).eval()
    x = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=CL)
    with torch.inference_mode():
        out = upsample_conv(conv, x)
        plain = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    expected = reference(conv, x)
    assert out.shape == expected.shape and out.dtype == dtype and out.is_contiguous(memory_format=CL)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    else:  # the summed taps are rounded to bf16 once: errors of the plain bf16 pair's size
        ours_error = (out.double() - expected).abs().max()
        plain_error = (plain.double() - expected).abs().max()
        assert ours_error <= 2.5 * plain_error + 1e-3, (ours_error, plain_error)


def test_upsample_conv_follows_weight_changes_and_input_shapes() -> None:
    """The phase weights are computed again after an in-place change (as load_state_dict makes) and for a
    new input shape; a deep copy computes the same."""
    g = torch.Generator().manual_seed(5)
    conv = fused.Conv2d(8, 8, 3, padding=1).to(memory_format=CL).eval()
    with torch.inference_mode():
        for shape in [(2, 8, 6, 6), (1, 8, 4, 10), (2, 8, 6, 6)]:
            x = torch.randn(*shape, generator=g).contiguous(memory_format=CL)
            torch.testing.assert_close(upsample_conv(conv, x).double(), reference(conv, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(-3.0)
        conv.bias.add_(1.0)
        torch.testing.assert_close(upsample_conv(conv, x).double(), reference(conv, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(upsample_conv(copy.deepcopy(conv), x).double(), reference(conv, x), rtol=1e-5, atol=1e-5)


def test_upsample_conv_with_gradients_is_the_plain_pair() -> None:
    """With autograd (training) the plain pair runs: the same values and gradients as nn layers."""
    g = torch.Generator().manual_seed(6)
    block = Upsample(8, 6)
    x = torch.randn(2, 8, 5, 5, generator=g).contiguous(memory_format=CL).requires_grad_()
    out = block(x)
    out.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    plain = F.conv2d(F.interpolate(x2, scale_factor=2.0, mode="nearest"), block.conv.weight.detach(), block.conv.bias.detach(), padding=1)
    plain.square().sum().backward()
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(x.grad, x2.grad)
    assert block.conv.weight.grad is not None


def test_upsample_conv_falls_back_for_other_inputs() -> None:
    """NCHW input, another kernel size, or ``unfused()``: the plain pair (same results)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 6, 6, generator=g)
    conv = nn.Conv2d(4, 5, 3, padding=1).eval()
    wide = nn.Conv2d(4, 5, 5, padding=2).eval()
    with torch.inference_mode():
        torch.testing.assert_close(upsample_conv(conv, x).double(), reference(conv, x), rtol=1e-5, atol=1e-5)
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        torch.testing.assert_close(upsample_conv(wide, x.contiguous(memory_format=CL)), wide(up))
        with fused.unfused():
            torch.testing.assert_close(upsample_conv(conv, x.contiguous(memory_format=CL)), conv(up))
