"""Training metrics to a JSONL file (one row per logged step) and to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cascade.fileio import atomic_write_text


class MetricsLog:
    """Appends rows to ``OUT/metrics.jsonl`` and scalars to ``OUT/tensorboard`` (main rank only)."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional at run time
            self._tb = None

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` by a run that did not reach its next checkpoint (and a row
        torn by a kill)."""
        rows = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    rows.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue
        atomic_write_text(self.path, "".join(row + "\n" for row in rows))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
