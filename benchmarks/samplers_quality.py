"""All-correct rate of the base stage against steps, for each sampler, on world prompts.

    .venv/bin/python benchmarks/samplers_quality.py [--checkpoint weights/shapes] [--n 200] [--split eval] [--device cuda] [--batch-size 100]
        [--points ddpm:250 dpmpp-2m:20]

Each point renders N fully specified world captions at 64 px with one sampler and step count and
reads them back with the world reader (as `cascade eval` does). Prints a table and writes
benchmarks/results/samplers_quality.json and .png.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

GRID = {"ddpm": (50, 100, 250), "ddim": (10, 20, 50), "dpmpp-2m": (10, 20, 50), "euler": (20, 50), "heun": (10, 25)}
DRY_GRID = {"ddpm": (2,), "dpmpp-2m": (2,)}  # --dry: checks that the script runs, measures nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "weights" / "shapes")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--split", default="eval")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch (results do not depend on it)")
    parser.add_argument("--dry", action="store_true", help="2 prompts (and without --points two samplers at 2 steps): checks the script runs")
    parser.add_argument("--points", nargs="+", metavar="SAMPLER:STEPS",
                        help="only these settings, e.g. ddpm:250 dpmpp-2m:20 (the pair the issue's target compares); "
                             "default: the whole grid")
    parser.add_argument("--out", type=Path, default=RESULTS / "samplers_quality.json")
    args = parser.parse_args()
    grid = parse_points(parser, args.points) if args.points else (DRY_GRID if args.dry else GRID)
    n = 2 if args.dry else args.n

    from cascade.evaluation.cascade_eval import EvalRequest, accuracy_table, render_world_prompts, score_renders
    from cascade.pipeline import Cascade

    cascade = Cascade.load(args.checkpoint, size=None, device=args.device)
    base = EvalRequest(checkpoint=args.checkpoint, split=args.split, n=n, size=cascade.sizes[0],
                       batch_size=args.batch_size, progress=False)
    rows, points = [], []
    for sampler, step_counts in grid.items():
        for steps in step_counts:
            request = replace(base, sampler=sampler, steps=(steps,))
            scenes, _, renders, _ = render_world_prompts(request, cascade)
            table = accuracy_table(score_renders(scenes, renders, video=False))
            points.append({"sampler": sampler, "steps": steps, "all_correct": table["all"]["accuracy"], "accuracy": table})
            rows.append([sampler, steps, round(100 * table["all"]["accuracy"], 1)])
            print(f"{sampler} {steps}: all-correct {100 * table['all']['accuracy']:.1f}%", flush=True)
    print_table(["sampler", "steps", "all-correct %"], rows)
    by = {(p["sampler"], p["steps"]): p["all_correct"] for p in points}
    if ("dpmpp-2m", 20) in by and ("ddpm", 250) in by:
        gap = 100 * (by[("ddpm", 250)] - by[("dpmpp-2m", 20)])
        print(f"DPM-Solver++ at 20 steps is {gap:+.1f} points from DDPM at 250 (negative: better)")
    write_json(args.out, {"split": args.split, "n": n, "points": points, "checkpoint": str(args.checkpoint),
                          "device": str(cascade.device), "dry": args.dry, "machine": machine(cascade.device)})
    plot(points, grid, args.out.with_suffix(".png"))


def parse_points(parser: argparse.ArgumentParser, points: list[str]) -> dict[str, tuple[int, ...]]:
    """["ddpm:250", "dpmpp-2m:20", "ddpm:50"] -> {"ddpm": (250, 50), "dpmpp-2m": (20,)}; a bad entry is a one-line error."""
    from cascade.sampling.registry import SAMPLERS

    grid: dict[str, tuple[int, ...]] = {}
    for point in points:
        sampler, _, steps = point.partition(":")
        if sampler not in SAMPLERS:
            parser.error(f"--points {point}: unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
        if not steps.isdigit() or int(steps) < 1:
            parser.error(f"--points {point}: steps must be a positive whole number, as in {sampler}:20")
        if int(steps) not in grid.get(sampler, ()):  # (a repeated point runs once)
            grid[sampler] = grid.get(sampler, ()) + (int(steps),)
    return grid


def plot(points: list[dict], grid: dict[str, tuple[int, ...]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for sampler in grid:
        xs = [(p["steps"], 100 * p["all_correct"]) for p in points if p["sampler"] == sampler]
        ax.plot(*zip(*xs), marker="o", label=sampler)
    ax.set(xscale="log", xlabel="steps (base stage)", ylabel="all-correct %", title="Base stage: samplers and steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
