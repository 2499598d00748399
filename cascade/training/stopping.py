"""Stopping a training run early, with a checkpoint: a time limit (``--max-minutes``) and SIGTERM.

Schedulers and ``timeout`` end a job with SIGTERM (SLURM some seconds before SIGKILL). Killed in a
step, a run would lose every step since its last periodic checkpoint; instead the signal is noted
and the loop stops at the end of the step it is in, writes a checkpoint and returns, so that
``--resume`` continues from that very step. The same holds for a run given a time budget.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType


class StopRequests:
    """Says when a run should stop before ``max_steps``: its time is up, or SIGTERM came.

    Use as a context manager around the loop: it installs the SIGTERM handler (main thread only)
    and puts the previous one back on exit. The clock starts on entering.
    """

    def __init__(self, max_seconds: float | None = None) -> None:
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.max_seconds = max_seconds
        self.signal_name: str | None = None
        self._started = time.monotonic()
        self._previous: signal.Handlers | None = None
        self._installed = False

    def __enter__(self) -> StopRequests:
        self._started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(number).name

    @property
    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.monotonic() - self._started

    def reason(self) -> str | None:
        """Why the run should stop now (``"SIGTERM"`` or ``"time limit"``), or None to go on."""
        if self.signal_name is not None:
            return self.signal_name
        if self.max_seconds is not None and self.elapsed >= self.max_seconds:
            return "time limit"
        return None
