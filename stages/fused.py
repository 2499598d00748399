"""A layer and an add in one pass, for inference on the CPU (oneDNN post-ops).

Every residual branch of the U-Net ends in a layer whose output is added to the branch's input:
``conv2(h) + skip`` in a residual block, ``out(attention) + x`` in attention. On the CPU the add
is a separate pass over the activation, as slow per element as the layer's own write (1.0 of
2.9 ms for a 64-channel 64x64 bf16 batch of 16 here). oneDNN can add a tensor as the convolution
or matmul writes its output (a "binary add" post-op); PyTorch exposes that as
``torch.ops.mkldnn._convolution_pointwise`` and ``_linear_pointwise``, the ops inductor fuses into.

The same post-op convolves a channel concatenation without building it (:func:`conv_of_concat`),
and :class:`Conv2d` hands oneDNN weights reordered once per input shape instead of on every call.

These helpers use the fused op only where it computes what the plain layers do: CPU tensors of one
dtype (float32 or bfloat16, no autocast), nothing that needs gradients (the ops have no backward),
and a PyTorch with oneDNN. Everywhere else, and with ``CASCADE_FUSED=0`` in the environment, they
run the plain layer and add.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = (torch.float32, torch.bfloat16)
_switched_off: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_unfused", default=False)


@functools.lru_cache(maxsize=1)
def _off_by_environment() -> bool:
    return os.environ.get("CASCADE_FUSED", "1") == "0"


def switched_off() -> bool:
    """True inside :func:`unfused` or with ``CASCADE_FUSED=0``: every fast path of this module and of
    those built on it (the upsampling by phases, the stacked modulations) runs its plain layers."""
    return _switched_off.get() or _off_by_environment()


@functools.lru_cache(maxsize=1)
def fusion_available() -> bool:
    """True when this PyTorch has oneDNN and its pointwise-fusion ops, and ``CASCADE_FUSED`` is not 0."""
    if _off_by_environment():
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "mkldnn")):
        return False
    return all(hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise_", "_linear_pointwise"))


@functools.lru_cache(maxsize=1)
def _bf16_supported() -> bool:
    """oneDNN's own check that this CPU runs bf16 (the fused ops skip the one ``F.conv2d`` makes)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Plain layers and adds inside this block, in this thread or task (FLOP counters see only the plain ops)."""
    token = _switched_off.set(True)
    try:
        yield
    finally:
        _switched_off.reset(token)


def _fusable(*tensors: torch.Tensor) -> bool:
    """Whether ``tensors`` (input, weight, residual, ...) can go through a fused oneDNN op unchanged:
    CPU tensors of one dtype, no autograd (the ops have no backward), no autocast to another dtype,
    not while ``torch.compile`` traces, and oneDNN enabled."""
    if torch.is_grad_enabled() or switched_off() or torch.compiler.is_compiling() or not fusion_available():
        return False
    first = tensors[0]
    dtype, device = first.dtype, first.device
    if device.type != "cpu" or dtype not in _DTYPES or not torch.backends.mkldnn.enabled:
        return False
    for t in tensors:  # (a loop: this runs ~90 times a forward, and generator expressions cost more)
        if t.dtype != dtype or t.device != device:
            return False
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != dtype:
        return False
    return dtype != torch.bfloat16 or _bf16_supported()


def _plain_conv(conv: nn.Conv2d, *inputs: torch.Tensor) -> bool:
    """A convolution the fused ops take as is, on channels-last 4-D ``inputs`` (input, residual, ...)."""
    return (
        conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and all(t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in inputs)
    )


def tensor_key(t: torch.Tensor) -> tuple:
    """(device, address, version counter, dtype) of a weight, the key of the caches of weights derived
    from it (here, in :mod:`stages.upsample_conv`, :mod:`stages.modulations` and :mod:`stages.native`).

    It changes when the weight is replaced (``load_state_dict`` into a new tensor, ``.to()``) or changed
    in place through the tensor itself (``load_state_dict``, ``copy_`` and optimizer steps under
    ``no_grad``). It does not change for in-place changes made through ``.data`` or to inference tensors
    (they have no version counter): after such changes call :func:`clear_weight_caches`.
    """
    try:
        version = t._version
    except RuntimeError:  # an inference tensor: no version counter
        version = -1
    return t.device, t.data_ptr(), version, t.dtype


# Every cache of derived weights (weak keys: copies and deletions of a module need nothing from them).
_weight_caches: list = []


def weight_cache(cache):
    """Register ``cache`` (a weak-keyed dict of weights derived from modules or tensors) so that
    :func:`clear_weight_caches` empties it; returns it."""
    _weight_caches.append(cache)
    return cache


def clear_weight_caches() -> None:
    """Forget every derived weight (packed, stacked, converted): needed only after weights were changed
    in a way :func:`tensor_key` cannot see (through ``.data``, or in place inside ``inference_mode``)."""
    for cache in _weight_caches:
        cache.clear()


# Weights reordered into oneDNN's blocked layout, per convolution and part of its input channels:
# {part: (key, packed)} for the last input shape seen.
_packed_cache: weakref.WeakKeyDictionary[nn.Module, dict] = weight_cache(weakref.WeakKeyDictionary())


def _packed(conv: nn.Conv2d, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
    """The conv's weight (its input ``channels``) reordered once for inputs shaped like x and reused
    while the weight and the input shape stay the same. oneDNN otherwise reorders it on every call: a
    256-channel 3x3 convolution on 8x8 maps took 0.28 against 0.11 ms at batch 2 (0.67 against 0.52 at 16)."""
    part = (channels.start, channels.stop)
    key = (*tensor_key(conv.weight), tuple(x.shape))
    parts = _packed_cache.setdefault(conv, {})
    if part not in parts or parts[part][0] != key:
        parts[part] = (key, reordered(conv, conv.weight[:, channels], x))  # [C_out, C_in part, k, k]
    return parts[part][1]


def reordered(conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight`` (for conv's padding, stride, dilation and groups) in oneDNN's blocked layout for
    inputs shaped like x: what the fused ops take without reordering it on every call."""
    weight = weight.detach().contiguous(memory_format=torch.channels_last)
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape))


def _weight(conv: nn.Conv2d, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
    """The weight (its input ``channels``) to hand the fused ops: packed once for a :class:`Conv2d`."""
    if isinstance(conv, Conv2d):
        return _packed(conv, x, channels)
    if channels == slice(None):
        return conv.weight
    return conv.weight[:, channels].contiguous(memory_format=torch.channels_last)


def _convolve(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv(x) with ``weight`` (plain or packed) and ``bias`` in place of the conv's own, one oneDNN op."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "none", [], "")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and results) whose weights, in CPU inference where the fused ops
    run, are reordered for oneDNN once per input shape instead of on every call (:func:`_packed`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = (x, self.weight) + ((self.bias,) if self.bias is not None else ())
        if not (_plain_conv(self, x) and _fusable(*tensors)):
            return super().forward(x)
        return _convolve(self, x, _packed(self, x), self.bias)


def _accumulate(target: torch.Tensor, conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """target += conv(x) with ``weight`` and ``bias`` in place of the conv's own, in one oneDNN op."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        target, x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "add", 1.0, None, [], None,
    )


def conv_add(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor, *, overwrite_residual: bool = False) -> torch.Tensor:
    """``conv(x) + residual`` for x [N, C_in, H, W] and residual [N, C_out, H', W'] (the conv's output shape).

    Fused where possible: the convolution adds ``residual`` as it writes. With ``overwrite_residual``
    the result is written into ``residual`` itself (no new buffer; pass it only for a tensor nothing
    else reads, such as a fresh skip projection); otherwise into a copy of it.
    """
    tensors = (x, conv.weight, residual) + ((conv.bias,) if conv.bias is not None else ())
    if not (_plain_conv(conv, x, residual) and _fusable(*tensors)):
        out = conv(x)
        return out.add_(residual) if not torch.is_grad_enabled() and out.dtype == residual.dtype else out + residual
    target = residual if overwrite_residual else residual.clone(memory_format=torch.channels_last)
    # (A copy, then the in-place op, measured faster here than the out-of-place fused op: 2.2 against
    # 2.4 ms for a 64-channel 64x64 batch of 16.)
    return _accumulate(target, conv, x, _weight(conv, x), conv.bias)


def concat_conv_fusable(conv: nn.Conv2d, first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether :func:`conv_of_concat` runs without building the concatenation."""
    tensors = (first, second, conv.weight) + ((conv.bias,) if conv.bias is not None else ())
    return _plain_conv(conv, first, second) and _fusable(*tensors)


def conv_of_concat(conv: nn.Conv2d, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``conv(cat([first, second], dim=1))`` for first [N, C1, H, W] and second [N, C2, H, W].

    Fused where possible, without the concatenation: conv over first with the weights' first C1
    input channels, then the convolution over second with the rest added in place as it writes.
    """
    if not concat_conv_fusable(conv, first, second):
        return conv(torch.cat([first, second], dim=1))
    split = first.shape[1]
    out = _convolve(conv, first, _weight(conv, first, slice(0, split)), conv.bias)
    return _accumulate(out, conv, second, _weight(conv, second, slice(split, None)), None)


def linear_add(linear: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``linear(x) + residual`` for x [..., D_in] and residual [..., D_out], fused where possible."""
    tensors = (x, linear.weight, residual) + ((linear.bias,) if linear.bias is not None else ())
    if not (_fusable(*tensors) and x.is_contiguous() and residual.is_contiguous() and x.shape[:-1] == residual.shape[:-1]):
        out = F.linear(x, linear.weight, linear.bias)
        return out.add_(residual) if not torch.is_grad_enabled() and out.dtype == residual.dtype else out + residual
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")
