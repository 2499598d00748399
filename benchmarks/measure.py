"""Measuring on a shared machine: seconds, peak memory, the bf16 matmul rate, and runs interleaved
round by round so that other processes' load can be seen and dropped.

GPU runs are timed with ``synchronized`` closures (the queued work is waited for); their memory is
the CUDA allocator's peak.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def peak_memory_mib(fn: Callable[[], None], device: torch.device | str = "cpu") -> float | None:
    """Peak memory growth (MiB) during ``fn()``. CPU: the resident set's (free heap handed back to
    the kernel, the high-water mark reset, then VmHWM - VmRSS before; None where /proc does not
    allow it). CUDA: the allocator's peak over what was allocated before."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if _libc is not None:
        _libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except (OSError, StopIteration):
        return None


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronized(fn: Callable[[], None], device: torch.device | str) -> Callable[[], None]:
    """``fn`` that waits for the GPU's queued work before it returns (on the CPU: ``fn`` itself)."""
    if torch.device(device).type != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def matmul_rate(device: torch.device | str = "cpu", sizes: tuple[int, ...] = (2048, 4096)) -> float:
    """The best bf16 matmul rate (FLOP/s) on ``device`` over square sizes (on a GPU: 8192 too), one try each."""
    device = torch.device(device)
    sizes = sizes + ((8192,) if device.type == "cuda" else ())
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        product = synchronized(lambda: a @ b, device)
        product()
        best = max(best, 2 * n**3 / seconds(product))
    return best


def _jiffies() -> tuple[int, int]:
    """CPU time used so far (clock ticks) by the whole machine and by this process."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    mine = os.times()
    return sum(values) - values[3] - values[4], round((mine.user + mine.system) * os.sysconf("SC_CLK_TCK"))


def others_share(fn: Callable[[], None]) -> float:
    """Run ``fn``; the share of the machine's CPUs that other processes used meanwhile (0 to 1)."""
    (busy0, mine0), start = _jiffies(), time.perf_counter()
    fn()
    (busy1, mine1), wall = _jiffies(), time.perf_counter() - start
    return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (wall * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1))


def wait_until_quiet(limit: float = 30.0, busy: float = 0.1) -> None:
    """Sleep (up to ``limit`` s) until other processes use under ``busy`` of the CPUs for half a second."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end and others_share(lambda: time.sleep(0.5)) > busy:
        pass


def interleaved(runs: dict[Any, Callable[[], None]], rounds: int, peak: list[float],
                device: torch.device | str = "cpu", quiet_wait: float = 30.0) -> dict[Any, list[float]]:
    """Each run once per round in turn (after a warm-up each), the matmul rate before every round.

    This machine is shared: each round waits for a quiet moment, and a run during which other
    processes used over 10% of the CPUs is dropped (unless every round of that run was busy).
    """
    for fn in runs.values():
        fn()
    times: dict[Any, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        wait_until_quiet(quiet_wait)
        peak.append(matmul_rate(device))
        for name, fn in runs.items():
            start = time.perf_counter()
            share = others_share(fn)
            times[name].append((time.perf_counter() - start, share))
    quiet = {name: [t for t, share in v if share <= 0.1] or [t for t, _ in v] for name, v in times.items()}
    return quiet


