"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, as one 2x2 convolution at low resolution.

The U-Net's :class:`~stages.blocks.Upsample` is ``conv3x3(nearest_2x(x))``. Each output pixel
(2i + a, 2j + b) of that pair reads the upsampled image at rows 2i + a - 1 .. 2i + a + 1, which are
only two distinct low-resolution rows: i - 1 and i (phase a = 0: kernel rows 0 | 1 + 2) or i and
i + 1 (a = 1: kernel rows 0 + 1 | 2), and the same for columns. So each of the four output phases
(a, b) is a 2x2 convolution of the low-resolution x with summed kernel taps
K_ab = T_a W T_b^T (T below), and one 2x2 convolution with 4 * C_out output channels and padding 1
computes all four at once: phase (a, b) at (i, j) is its output at (i + a, j + b) (Odena et al.
2016, "Deconvolution and checkerboard artifacts", the resize-convolution; here evaluated per phase).

That is 4 * 4 / (9 * 4) = 44% of the multiply-adds of the 3x3 convolution at high resolution, times
(H + 1)(W + 1) / (H W) for the extra output row and column (47% from 32 px, 56% from 8 px), and the
upsampled image is never written: on the 2-core CPU at batch 16, 128 channels, 32 -> 64 px, bf16,
4.7 against 7.9 ms for the plain pair. The four phases are interleaved into the channels-last
output by one strided copy.

The result is the plain pair's up to rounding: the summed taps are rounded once to the weights'
dtype (for bf16 weights an error of the same size as the output's own bf16 rounding). It is used
where the fused oneDNN ops run (CPU inference, see :mod:`stages.fused`) and ``CASCADE_FUSED`` is
not 0; elsewhere, and for convolutions other than 3x3 / stride 1 / padding 1, the plain pair runs.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from stages.fused import _convolve, _fusable, _plain_conv, reordered, tensor_key, weight_cache

# _TAPS[a, p, r] = 1 where tap p (0: the lower low-res row, 1: the upper one) of phase a takes kernel row r.
_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)

# Per convolution: (key, oneDNN-packed phase weights [4 * C_out, C_in, 2, 2], bias [4 * C_out]); weak keys.
_phase_cache: weakref.WeakKeyDictionary[nn.Module, tuple] = weight_cache(weakref.WeakKeyDictionary())


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel [C_out, C_in, 3, 3] as the four phases' 2x2 kernels [4 * C_out, C_in, 2, 2]
    (phase-major: rows (a * 2 + b) * C_out + o), summed in float64 and rounded once to its dtype."""
    taps = _TAPS.to(weight.device)
    kernels = torch.einsum("apr,ocrs,bqs->abocpq", taps, weight.double(), taps)  # [2, 2, C_out, C_in, 2, 2]
    return kernels.reshape(4 * weight.shape[0], weight.shape[1], 2, 2).to(weight.dtype)


def _applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    tensors = (x, conv.weight) + ((conv.bias,) if conv.bias is not None else ())
    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
        and _plain_conv(conv, x) and _fusable(*tensors)
    )


def _prepared(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The phase weights packed for oneDNN for inputs shaped like x, and the repeated bias; computed
    again when the weights or the bias change (in place or replaced) or the input shape does."""
    key = (tensor_key(conv.weight), None if conv.bias is None else tensor_key(conv.bias), tuple(x.shape))
    cached = _phase_cache.get(conv)
    if cached is None or cached[0] != key:
        bias = None if conv.bias is None else conv.bias.detach().repeat(4)
        cached = (key, reordered(conv, phase_weights(conv.weight), x), bias)  # (the 2x2 kernel keeps conv's padding 1)
        _phase_cache[conv] = cached
    return cached[1], cached[2]


def upsample_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for x [N, C_in, H, W] -> [N, C_out, 2H, 2W].

    Channels-last in and out. On the fast path (see the module's docstring) one 2x2 convolution
    at H x W and a strided copy; otherwise the plain upsampling and convolution.
    """
    if not _applies(conv, x):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    weight, bias = _prepared(conv, x)
    phases = _convolve(conv, x, weight, bias)  # [N, 4 * C_out, H + 1, W + 1] channels-last
    n, _, height, width = x.shape
    channels = conv.out_channels
    step_n, _, step_h, step_w = phases.stride()  # channels-last: the channel stride is 1
    # out[n, 2i + a, 2j + b, o] (NHWC) = phases[n, (2a + b) C_out + o, i + a, j + b]: a view of phases
    interleaved = phases.as_strided((n, height, 2, width, 2, channels),
                                    (step_n, step_h, step_h + 2 * channels, step_w, step_w + channels, 1))
    out = interleaved.contiguous().view(n, 2 * height, 2 * width, channels)  # [N, 2H, 2W, C_out]
    return out.permute(0, 3, 1, 2)  # [N, C_out, 2H, 2W], channels-last memory
