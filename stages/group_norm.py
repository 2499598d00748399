"""GroupNorm (and the SiLU that follows it) for the U-Net's activations [N, C, H, W], fast on the CPU.

The path depends on the memory format, the dtype and whether gradients are needed (figures from
the 2-core CPU, bf16, batch 16):

- bf16 channels-last without gradients (inference): our C kernels (``stages/native.py``):
  per-channel sums, then normalise, scale, shift and SiLU in one pass. 1.8 against 2.8 ms for 64
  channels at 64x64, 0.26 against 2.6 ms for 192 channels at 16x16 (PyTorch's GroupNorm, addcmul
  and SiLU).
- Other channels-last input without gradients: small maps (fewer than 1,024 positions) from
  float32 statistics in PyTorch ops, since PyTorch's channels-last kernel parallelises over
  (sample, group) and walks each group's few channels position by position there (2.2 against
  0.19 ms in NCHW order at 192 channels and 16x16); large maps in PyTorch's kernel.
- Channels-last with gradients (training): PyTorch's channels-last backward is slow at every size
  (36 ms forward and backward at 64 channels and 64x64, against 4 ms on NCHW memory and 16 ms
  through NCHW copies). Large maps go through :class:`_ScaledNorm`, whose backward is a few passes
  of plain tensor ops over the channels-last memory (per-channel sums over positions, then one
  fused expression), without transposes; small maps through NCHW copies.
- NCHW input: PyTorch's kernel.

:class:`GroupNorm` (a drop-in ``nn.GroupNorm``, same parameters and results), :func:`group_norm_silu`
and :func:`modulated_group_norm` (the norm, then a per-sample scale and shift) pick the path; the
output keeps the input's memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from stages import native

# Channels-last maps with fewer positions than this take the small-map routes ("sums", "nchw").
_SMALL_CHANNELS_LAST = 1024


def _channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _route(x: torch.Tensor) -> str:
    """How to normalise ``x``: "native" (PyTorch's kernel as is) or, for channels-last maps,
    "kernels" (bf16 without gradients: our C kernels), "sums" (other small maps without gradients),
    "nchw" (small, with gradients: through an NCHW copy) or "rows" (large, with gradients)."""
    if not _channels_last(x):
        return "native"
    if native.usable(x):  # (only where nothing records gradients)
        return "kernels"
    grad = torch.is_grad_enabled() and x.requires_grad
    if x.shape[2] * x.shape[3] < _SMALL_CHANNELS_LAST:
        return "nchw" if grad else "sums"
    return "rows" if grad else "native"


def _per_channel(v: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, C], each group's value repeated over its channels."""
    n, groups = v.shape
    return v[:, :, None].expand(n, groups, channels // groups).reshape(n, channels)


def _scaled_norm_by_sums(x: torch.Tensor, num_groups: int, eps: float, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """xhat * gain + shift (gain, shift [N|1, C] float32) for a small channels-last x, in PyTorch ops.

    Everything in float32 over the rows of the [N, H*W, C] view of the memory (no transposes), with
    two passes for the statistics (the group means, then the squares of the centred values), and
    the result written back in x's dtype and memory format.
    """
    n, c, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c).float()  # [N, HW, C]
        count = (c // num_groups) * h * w
        mean = _per_channel(rows.sum(1).view(n, num_groups, -1).sum(2) / count, c)  # [N, C]
        centred = rows - mean[:, None, :]
        variance = torch.linalg.vecdot(centred, centred, dim=1).view(n, num_groups, -1).sum(2) / count  # [N, G]
        a = gain * _per_channel(torch.rsqrt(variance + eps), c)  # [N, C]: y = a (x - mean) + shift
        y = torch.addcmul(shift[:, None, :], centred, a[:, None, :])  # [N, HW, C] float32
    return y.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)  # [N, C, H, W] channels-last


class _ScaledNorm(torch.autograd.Function):
    """xhat * gain + shift for channels-last x [N, C, H, W], xhat = (x - mean) * rstd per (sample, group),
    gain and shift [N, C] or [1, C] float32 (per sample, or the norm's own affine parameters).

    Forward: PyTorch's kernel for xhat (fast on channels-last in the forward, float32 statistics),
    then one ``addcmul``. Backward, in float32 over the rows of the [N, H*W, C] view of the memory
    (nothing transposed), from the saved x, with sums over the positions of each channel
    (s1 = sum dy, s2 = sum dy * xhat, per sample and channel) and over each group's channels and
    positions (count m): d shift = s1, d gain = s2, and
    dx = rstd * (gain dy - sum_g(gain s1) / m - xhat sum_g(gain s2) / m).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_groups: int, eps: float, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ones = torch.ones(c, dtype=torch.float32, device=x.device)  # float32 parameters: float32 mean and rstd
        xhat, mean, rstd = torch.native_group_norm(x, ones, None, n, c, h * w, num_groups, eps)
        ctx.save_for_backward(x, mean, rstd, gain)
        ctx.num_groups, ctx.shift_rows = num_groups, shift.shape[0]
        return torch.addcmul(shift.to(x.dtype)[:, :, None, None], xhat, gain.to(x.dtype)[:, :, None, None])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None, None, torch.Tensor, torch.Tensor]:
        x, mean, rstd, gain = ctx.saved_tensors  # [N, C, H, W] channels-last, [N, G] float32 twice, [N|1, C] float32
        n, c, h, w = x.shape
        groups, count = ctx.num_groups, (c // ctx.num_groups) * h * w
        mean, rstd = _per_channel(mean, c), _per_channel(rstd, c)  # [N, C] each
        with torch.autocast(dy.device.type, enabled=False):
            # float32 throughout (products of bf16 values rounded to bf16 put errors of ~5% into the
            # weights' gradients); xhat = (x - mean) rstd is never built: sums and dx are written in x.
            dy_rows = dy.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, h * w, c).float()
            x_rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c).float()  # [N, HW, C]
            s1 = dy_rows.sum(1)  # [N, C]
            s2 = rstd * (torch.linalg.vecdot(dy_rows, x_rows, dim=1) - mean * s1)  # sum dy * xhat
            mean1 = _per_channel((gain * s1).view(n, groups, -1).sum(2) / count, c)  # [N, C]
            mean2 = _per_channel((gain * s2).view(n, groups, -1).sum(2) / count, c)
            # dx = rstd (gain dy - mean1 - xhat mean2) = a dy + b x + d
            a, b = rstd * gain, -rstd * rstd * mean2
            d = -rstd * mean1 - b * mean
            dx = torch.addcmul(d[:, None, :], dy_rows, a[:, None, :]).addcmul_(x_rows, b[:, None, :])  # [N, HW, C]
        dx = dx.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)  # channels-last
        dshift = s1 if ctx.shift_rows == n else s1.sum(0, keepdim=True)
        dgain = s2 if gain.shape[0] == n else s2.sum(0, keepdim=True)
        return dx, None, None, dgain, dshift


def _fold(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None,
          shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain, offset) [N|1, C] float32 with (xhat * weight + bias) * (1 + scale) + shift = xhat * gain + offset:
    (n * g + b)(1 + s) + t = n * g(1 + s) + (b(1 + s) + t)."""
    channels = x.shape[1]
    gain = norm.weight.float()[None] if norm.affine else torch.ones(1, channels, device=x.device)
    offset = norm.bias.float()[None] if norm.affine else torch.zeros(1, channels, device=x.device)
    if scale is not None:
        factor = 1 + scale.float()  # [N, C]
        gain, offset = gain * factor, offset * factor
    if shift is not None:
        offset = offset + shift.float()
    return gain, offset


def _normalize(x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
               silu: bool = False) -> torch.Tensor:
    """act((norm(x)) * (1 + scale) + shift) for x [N, C, H, W], scale and shift [N, C] or None, act SiLU
    or nothing, on the fast path for x (see the module's docstring). Same memory format out."""
    route = _route(x)
    weight, bias = (norm.weight, norm.bias) if norm.affine else (None, None)
    if route == "kernels":
        return native.group_norm_act(x, norm.num_groups, norm.eps, weight, bias, scale, shift, silu)
    if route in ("native", "nchw") and scale is None and shift is None:  # PyTorch's kernel applies the affine
        y = F.group_norm(x.contiguous() if route == "nchw" else x, norm.num_groups, weight, bias, norm.eps)
    else:
        gain, offset = _fold(norm, x, scale, shift)
        if route == "rows":
            y = _ScaledNorm.apply(x, norm.num_groups, norm.eps, gain, offset)
        elif route == "sums":
            y = _scaled_norm_by_sums(x, norm.num_groups, norm.eps, gain, offset)
        else:
            normed = F.group_norm(x.contiguous() if route == "nchw" else x, norm.num_groups, None, None, norm.eps)
            y = torch.addcmul(offset.to(normed.dtype)[:, :, None, None], normed, gain.to(normed.dtype)[:, :, None, None])
    if route == "nchw":
        y = y.contiguous(memory_format=torch.channels_last)
    return F.silu(y, inplace=not torch.is_grad_enabled()) if silu else y


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and results) on the fast path for x's layout and pass;
    the output keeps the input's memory format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _normalize(x, self)


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return GroupNorm(groups, channels, eps=1e-6)


def group_norm_silu(norm: nn.GroupNorm, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """silu(norm(x)) for x [N, C, H, W], the SiLU in the normalising pass where our kernels run.

    ``extra`` [N, C2, H, W]: normalise x and extra concatenated along channels; without the
    concatenation where our kernels take both (:func:`concat_free`).
    """
    if extra is None:
        return _normalize(x, norm, silu=True)
    if not concat_free(x, extra):
        return _normalize(torch.cat([x, extra], dim=1), norm, silu=True)
    weight, bias = (norm.weight, norm.bias) if norm.affine else (None, None)
    return native.group_norm_act(x, norm.num_groups, norm.eps, weight, bias, silu=True, extra=extra)


def concat_free(x: torch.Tensor, extra: torch.Tensor) -> bool:
    """Whether :func:`group_norm_silu` normalises x and extra without building their concatenation."""
    return _channels_last(x) and _channels_last(extra) and native.usable(x, extra)


def modulated_group_norm(x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor, shift: torch.Tensor, *,
                         silu: bool = False) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` (then SiLU if ``silu``) for x [N, C, H, W], scale and shift [N, C].

    The norm's affine parameters fold into the per-sample scale and shift, so after the
    normalisation one pass does the rest.
    """
    return _normalize(x, norm, scale, shift, silu)
