"""Benchmark: how many shapes-world scenes per second one CPU core renders.

Prints a table of scenes/s for images and clips at 64, 256 and 1024 px (plus the
cost of sampling and captioning a scene) and writes it as JSON.

    python benchmarks/world_render.py [--out benchmarks/results/world_render.json]
                                      [--seconds 2] [--sizes 64 256 1024] [--frames 8]

Rendering runs in one process on one thread (numpy only), so a data loader with W
workers gets about W times the rates shown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, machine, print_table, write_json

from data_pipeline.world import caption, render_clip, render_image, sample_scene


def _rate(fn: Callable[[int], object], seconds: float, min_calls: int = 3) -> tuple[float, int]:
    """Calls of fn(i) per second over about ``seconds`` (after one warm-up call)."""
    fn(10_000)
    n, start = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - start), n


def run(sizes: list[int], frames: int, seconds: float) -> dict:
    images = [sample_scene("train", s) for s in range(64)]
    clips = [sample_scene("train", s, clip=True, frames=frames) for s in range(64)]
    rows = []
    for size in sizes:
        rate, n = _rate(lambda i, size=size: render_image(images[i % 64], size), seconds)
        rows.append({"kind": "image", "size": size, "frames": 1, "scenes_per_s": rate,
                     "ms_per_scene": 1000 / rate, "frames_per_s": rate, "n": n})
        rate, n = _rate(lambda i, size=size: render_clip(clips[i % 64], size), seconds)
        rows.append({"kind": "clip", "size": size, "frames": frames, "scenes_per_s": rate,
                     "ms_per_scene": 1000 / rate, "frames_per_s": rate * frames, "n": n})
    sample_rate, _ = _rate(lambda i: sample_scene("train", i), seconds)
    clip_sample_rate, _ = _rate(lambda i: sample_scene("train", i, clip=True, frames=frames), seconds)
    caption_rate, _ = _rate(lambda i: caption(images[i % 64], seed=i, drop_words=True), seconds)
    return {
        "benchmark": "world_render",
        "rows": rows,
        "sample_scene_per_s": {"image": sample_rate, "clip": clip_sample_rate},
        "caption_per_s": caption_rate,
        "machine": {**machine(), "numpy": np.__version__, "cpu_count": os.cpu_count()},
        "settings": {"seconds_per_row": seconds, "frames": frames},
    }


def print_result(result: dict) -> None:
    print_table(
        ["kind", "size", "frames", "scenes/s", "ms/scene", "frames/s"],
        [[r["kind"], r["size"], r["frames"], f"{r['scenes_per_s']:.1f}", f"{r['ms_per_scene']:.2f}",
          f"{r['frames_per_s']:.1f}"] for r in result["rows"]],
    )
    s = result["sample_scene_per_s"]
    print(f"sample_scene: {s['image']:.0f}/s (image), {s['clip']:.0f}/s (clip); "
          f"caption: {result['caption_per_s']:.0f}/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS / "world_render.json"), help="JSON output path")
    ap.add_argument("--seconds", type=float, default=2.0, help="time spent per table row")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    args = ap.parse_args(argv)
    result = run(args.sizes, args.frames, args.seconds)
    print_result(result)
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
