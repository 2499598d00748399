"""Small helpers shared by the benchmark scripts: where results go, and writing them atomically."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: Any = "cpu") -> dict[str, Any]:
    """What the numbers were measured on (with the GPU's name when ``device`` is a CUDA device)."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON through a temp file and a rename."""
    from cascade.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain, aligned text table."""
    cells = [[str(h) for h in headers]] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def parse_clip_probe(description: str, checkpoint_help: str, clips_help: str, default_times: str,
                     out_name: str) -> tuple[argparse.Namespace, list[float]]:
    """The command line of the probes that denoise eval clips with a video stage at a few noise levels
    (verb_margin.py, first_frame_use.py): --checkpoint, --clips, --times, --out; the parsed arguments
    and the noise levels as fractions of the schedule's time range."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", type=Path, required=True, help=checkpoint_help)
    parser.add_argument("--clips", type=int, default=16, help=f"{clips_help} (default 16)")
    parser.add_argument("--times", default=default_times,
                        help=f"noise levels, as fractions of the schedule's time range (default {default_times})")
    parser.add_argument("--out", type=Path, default=RESULTS / out_name)
    args = parser.parse_args()
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    try:
        fractions = [float(f) for f in args.times.split(",")]
    except ValueError:
        parser.error(f"--times must be comma-separated fractions, got {args.times!r}")
    if not all(0.0 < f <= 1.0 for f in fractions):
        parser.error("--times must be fractions in (0, 1]")
    return args, fractions
