"""The fastest way to run the U-Nets on this machine: which dtype, which memory layout, which allocator.

Measured on a 2-core CPU with AMX (see ``benchmarks/unet_vs_diffusers.py``): bf16 matmuls and
convolutions run on AMX several times faster than fp32; fp16 has no AMX path and is slow, so it is
never chosen. Channels-last activations let oneDNN convolve without reordering. glibc hands large
activations back to the kernel after every op and faults them in again on the next (~25k page
faults per 64 px forward at batch 16); :func:`tune_allocator` keeps them instead.

- :func:`checked_device`: a device a user named, or a one-line error.
- :func:`fast_dtype`: bf16 where the hardware runs it fast (CPU with AMX or AVX512-BF16, CUDA with
  bf16), else float32.
- :func:`autocast`: a bf16 autocast context where that pays, else a no-op (training: fp32 master
  weights, bf16 matmuls).
- :func:`prepare_for_inference`: eval mode, no gradients, weights in the fast dtype, channels-last,
  optionally ``torch.compile`` with freezing (60-100 s of compiling per input shape on this CPU:
  worth it for batch jobs, not for one render).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path

import torch
from torch import nn

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def checked_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device if this machine has it (cpu, cuda, cuda:N), else a one-line
    :class:`~cascade.errors.UserError` naming the problem."""
    from cascade.errors import UserError

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {str(device)!r} (use cpu, cuda or cuda:N)") from None
    if parsed.type not in ("cpu", "cuda"):
        raise UserError(f"device {parsed} is not supported (use cpu, cuda or cuda:N)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {parsed} was asked for but no CUDA GPU is available here")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"device {parsed} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return parsed


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AMX tiles or AVX512-BF16 dot products).

    ``torch.backends.cpu.get_cpu_capability()`` reports "AMX" or "AVX512_BF16"-class levels on
    recent builds; older builds only say "AVX512", so the kernel's flags decide in that case.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    return any(flag in cpu_flags() for flag in _BF16_FLAGS)


def fast_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """torch.bfloat16 where ``device`` runs bf16 fast, else torch.float32 (never float16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def autocast(device: torch.device | str = "cpu", enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to :func:`fast_dtype` on ``device``, or a no-op where that is float32."""
    device = torch.device(device)
    dtype = fast_dtype(device)
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D activation [N, C, H, W] in channels-last memory (other ranks unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def prepare_for_inference(
    module: nn.Module,
    device: torch.device | str = "cpu",
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    compile: bool = False,
) -> nn.Module:
    """Eval mode, gradients off, weights cast to ``dtype`` (default :func:`fast_dtype`), 4-D
    convolution weights in channels-last memory, and optionally ``torch.compile``.

    bf16 weights rather than autocast: autocast re-casts every fp32 weight on every call (about a
    tenth of a 64 px forward here), and the matmuls and convolutions see bf16 weights either way.
    With ``compile``, inductor's freezing folds the weights into the graph (``compile`` costs
    60-100 s per new input shape on this CPU: use it for batch jobs, not one render). The module is
    changed in place and returned (compiled: the compiled wrapper).
    """
    dtype = fast_dtype(device) if dtype is None else dtype
    module = module.eval().requires_grad_(False).to(device=device, dtype=dtype)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        module = torch.compile(module)
    return module


@functools.lru_cache(maxsize=1)
def tune_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Stop glibc from returning large freed blocks to the kernel after every op (process-wide).

    A forward pass allocates and frees tens of large activations; by default each comes back from
    the kernel as fresh zeroed pages (page faults) and goes back when freed. Raising glibc's mmap
    and trim thresholds keeps them in the heap for reuse: 5-10% faster forwards and training
    steps here, at the price of the process keeping its peak heap. Returns False where this is not
    glibc (nothing changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, keep_bytes) == 1
    ok = mallopt(m_trim_threshold, min(2 * keep_bytes, 2**31 - 1)) == 1 and ok
    ok = mallopt(m_top_pad, 64 << 20) == 1 and ok
    return ok
