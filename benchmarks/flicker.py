"""Flicker of super-resolved clips: fresh noise per frame against noise shared across a clip's frames.

    .venv/bin/python benchmarks/flicker.py [--checkpoint weights/shapes] [--clips 8]

True 64 px world clips are refined to 256 px by the cascade's first SR stage, frame by frame. Flicker
is the mean absolute change between consecutive frames over the background: the pixels that do not
change in the true 256 px clip (sky, ground, sun, stars, waves), where any change is the SR stage's
own. Prints a table and writes benchmarks/results/flicker.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402


def background_flicker(clip: np.ndarray, truth: np.ndarray) -> float:
    """Mean |frame_t - frame_t-1| (0..255) over pixels static in the true clip; clips uint8 [F, H, W, 3]."""
    static = (np.abs(np.diff(truth.astype(np.int16), axis=0)).max(axis=-1) == 0).all(axis=0)  # [H, W]
    change = np.abs(np.diff(clip.astype(np.float64), axis=0)).mean(axis=-1)  # [F-1, H, W]
    return float(change[:, static].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "weights" / "shapes")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "flicker.json")
    args = parser.parse_args()

    from cascade.images import from_uint8, to_uint8
    from cascade.pipeline import Cascade, compute_context
    from data_pipeline.world import caption, render_clip, sample_scene

    cascade = Cascade.load(args.checkpoint, size=256)
    settings = cascade.settings()
    rows, results = [], {}
    scenes = [sample_scene("eval", seed, clip=True, frames=args.frames) for seed in range(args.clips)]
    low = torch.stack([from_uint8(render_clip(scene, cascade.stages[0].config.resolution)) for scene in scenes])
    truth = [render_clip(scene, cascade.stages[1].config.resolution) for scene in scenes]
    text = cascade.encode_text([caption(scene, style="compact", seed=scene.seed) for scene in scenes])
    for name, shared in (("fresh noise per frame", False), ("noise shared across frames", True)):
        generators = [torch.Generator().manual_seed(seed) for seed in range(args.clips)]
        with torch.inference_mode(), compute_context():
            refined = cascade.run_super_resolution(1, text, low, generators, settings, progress=False, shared_noise=shared)
        flicker = [background_flicker(to_uint8(clip), t) for clip, t in zip(refined, truth)]
        results[name] = float(np.mean(flicker))
        rows.append([name, round(results[name], 3)])
    truth_flicker = float(np.mean([background_flicker(t, t) for t in truth]))
    rows.append(["true 256 px clip", round(truth_flicker, 3)])
    print_table(["SR of clips", "background flicker (0-255)"], rows)
    write_json(args.out, {"flicker": results, "clips": args.clips, "frames": args.frames,
                          "checkpoint": str(args.checkpoint), "machine": machine()})


if __name__ == "__main__":
    main()
