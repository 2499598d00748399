"""Our C kernels for bf16 inference on the CPU (``stages/kernels/norm_act.c``), built at first use.

After each convolution of the U-Net come a GroupNorm, a per-sample scale and shift and a SiLU.
In PyTorch these are three passes over the activation, and the SiLU is bound by the float32
``exp`` (0.26 ns an element here, 60% of what a 64-channel 3x3 convolution takes per output
element): together 28% of a 64 px base forward at batch 16 on the 2-core CPU. The C file does them
in two passes (per-channel sums for the statistics; then normalise, scale, shift and SiLU with an
``exp`` accurate to 3e-6, ample for bf16's 8 bits), vectorised by the compiler, a chunk of samples
at a time so that the second pass reads from the core's cache what the first just read (the norms
of a batch-16 forward: 55 -> 46 ms, the forward 197 -> 189 ms).

The library is compiled with the system's C compiler (``cc -O3 -march=native``) into
``$XDG_CACHE_HOME/cascade/kernels`` (default ``~/.cache/cascade/kernels``), named by a hash of
the source, the flags and this CPU's feature flags, and loaded with ctypes. Where there is no
compiler or the build fails, :func:`library` returns None (one warning says why) and callers use
PyTorch's ops. ``CASCADE_NATIVE=0`` switches the kernels off.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.weak import WeakIdKeyDictionary

from stages.fused import tensor_key, weight_cache

SOURCE = Path(__file__).with_name("kernels") / "norm_act.c"
# -fno-trapping-math lets the compiler vectorise exp's clamps; -fno-math-errno keeps sqrt inline.
# No -ffast-math: NaN must propagate (a NaN input makes its group NaN, as in PyTorch).
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
if platform.machine() in ("x86_64", "AMD64", "i686"):
    FLAGS.insert(2, "-mprefer-vector-width=512")  # gcc's default is 256 bits; 512 ran the SiLU pass 1.3x faster here


_switched_off: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_native_unused", default=False)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cascade" / "kernels"


def _build(compiler: str, target: Path) -> None:
    """Compile SOURCE into ``target`` atomically (a temporary file beside it, then a rename)."""
    from cascade.fileio import atomic_output

    with atomic_output(target) as temporary:
        subprocess.run([compiler, *FLAGS, "-o", str(temporary), str(SOURCE)], check=True, capture_output=True, text=True,
                       timeout=120)


@contextlib.contextmanager
def unused() -> Iterator[None]:
    """PyTorch ops instead of the kernels inside this block, in this thread or task (for comparisons)."""
    token = _switched_off.set(True)
    try:
        yield
    finally:
        _switched_off.reset(token)


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be had here (switched off, no compiler, failed build)."""
    if os.environ.get("CASCADE_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        warnings.warn("no C compiler found (cc): GroupNorm and SiLU run as PyTorch ops, slower", stacklevel=2)
        return None
    from cascade.device import cpu_flags

    machine = " ".join(sorted(cpu_flags()))
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), compiler, machine]).encode()).hexdigest()[:16]
    target = cache_dir() / f"norm_act-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
            for stale in target.parent.glob("norm_act-*.so"):  # earlier sources or flags: never loaded again
                if stale != target:
                    stale.unlink(missing_ok=True)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        warnings.warn(f"could not build the C kernels ({detail.strip().splitlines()[-1] if detail.strip() else error}): "
                      "GroupNorm and SiLU run as PyTorch ops, slower", stacklevel=2)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.group_norm_act_bf16.argtypes = [pointer, size, pointer, size, size, size, size, ctypes.c_float,
                                        pointer, pointer, pointer, pointer, ctypes.c_int, pointer]
    lib.group_norm_act_bf16.restype = ctypes.c_int
    return lib


def _float_pointer(t: torch.Tensor | None, shape: tuple[int, ...], keep: list) -> int | None:
    """The address of ``t`` as contiguous float32 of ``shape`` (kept alive in ``keep``), or None."""
    if t is None:
        return None
    t = t.detach().float().reshape(shape).contiguous()
    keep.append(t)
    return t.data_ptr()


# A norm's weight or bias as float32 [C], per parameter: (key, float32 copy); weak keys by identity.
_float_parameters: WeakIdKeyDictionary = weight_cache(WeakIdKeyDictionary())


def _parameter_pointer(t: torch.Tensor | None, channels: int, keep: list) -> int | None:
    """:func:`_float_pointer` for a norm's weight or bias [C], converted once while it stays the same."""
    if t is None or t.ndim != 1 or t.shape[0] != channels:
        return _float_pointer(t, (channels,), keep)
    key = tensor_key(t)
    cached = _float_parameters.get(t)
    if cached is None or cached[0] != key:
        cached = (key, t.detach().float().contiguous())
        _float_parameters[t] = cached
    keep.append(cached[1])
    return cached[1].data_ptr()


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take ``tensors``: bf16 channels-last CPU activations [N, C, H, W] of one N, H
    and W, outside autograd (the kernels have no backward) and outside ``torch.compile``'s tracing,
    with the kernels built here."""
    first = tensors[0]
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and all(t.device.type == "cpu" and t.dtype == torch.bfloat16 and t.ndim == 4 for t in tensors)
        and all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors)
        and all(t.shape[0] == first.shape[0] and t.shape[2:] == first.shape[2:] for t in tensors)
        and not _switched_off.get()
        and library() is not None
    )


def group_norm_act(x: torch.Tensor, groups: int, eps: float, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                   silu: bool = False, extra: torch.Tensor | None = None) -> torch.Tensor:
    """act((norm(x) * weight + bias) * (1 + scale) + shift) in one call, x [N, C, H, W] bf16 channels-last.

    ``extra`` [N, C2, H, W]: x and extra concatenated along channels are normalised (the U-Net's skip
    connections), without materialising the concatenation; the output has C + C2 channels.
    weight and bias [C (+ C2)], scale and shift [N, C (+ C2)] (each may be None); act SiLU or nothing.
    """
    n, c, h, w = x.shape
    channels = c + (extra.shape[1] if extra is not None else 0)
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    keep: list[torch.Tensor] = []
    pointers = [_parameter_pointer(weight, channels, keep), _parameter_pointer(bias, channels, keep),
                _float_pointer(scale, (n, channels), keep), _float_pointer(shift, (n, channels), keep)]
    out = torch.empty(n, channels, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    status = library().group_norm_act_bf16(
        x.data_ptr(), c, None if extra is None else extra.data_ptr(), channels - c, n, h * w, groups, eps, *pointers,
        int(silu), out.data_ptr())
    if status != 0:
        raise MemoryError("group_norm_act_bf16: out of memory")
    return out
