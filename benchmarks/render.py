"""Time and peak memory per stage of a full render (base -> 256 -> 1024) and of an 8-frame clip.

    .venv/bin/python benchmarks/render.py [--checkpoint weights/shapes] [--frames 8] [--repeats 2] [--device cuda]
        [--untrained-video shapes-video64]

Peak memory on the CPU is the process's resident-set high-water mark (VmHWM), reset before each
stage through /proc/self/clear_refs, so each stage's figure is the most memory the process held
while that stage ran; on a GPU it is the CUDA allocator's peak during the stage. Prints a table and
writes benchmarks/results/render.json.

A release without a video stage can still time the clip path: ``--untrained-video PRESET`` then builds
that preset's video stage from the release's base weights (its temporal layers start as the identity, as
when a video stage is first trained from an image release). Its clips show no learned motion, but
time and memory depend only on the network's shape, not on what its weights learned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

PROMPT = "three glass spheres falling into the ocean at sunset"


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (and, on a GPU, wait for queued work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib(device: torch.device) -> float:
    """The peak memory since :func:`reset_peak` (waiting for the GPU's queued work first)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def untrained_video_stage(cascade, preset: str):
    """The ``preset`` video stage (with the base's text word width) started from the base's weights."""
    from dataclasses import replace

    from cascade.stage import DiffusionStage
    from cascade.training.diffusion_task import initialise_from_release
    from stages.registry import PRESETS

    config = PRESETS[preset]
    config = replace(config, unet=replace(config.unet, text_word_dim=cascade.stages[0].config.unet.text_word_dim))
    stage = DiffusionStage(config)
    initialise_from_release(stage, cascade.folder / cascade.config.base)
    return stage.eval().to(cascade.device)


def timed_stages(cascade, settings, frames: int | None) -> list[dict]:
    """Run the cascade stage by stage on one prompt, timing each stage and its peak memory."""
    from cascade.pipeline import compute_context

    device = cascade.device
    generators = [torch.Generator().manual_seed(0)]
    rows = []
    reset_peak(device)
    start = time.perf_counter()
    text = cascade.encode_text([PROMPT])
    video_text = cascade.encode_text([PROMPT], for_video=True) if frames else None
    rows.append({"stage": "text encoder", "size": "-", "steps": "-", "peak_mib": peak_mib(device),
                 "seconds": time.perf_counter() - start})
    with torch.inference_mode(), compute_context(device):
        first = cascade.video if frames else cascade.stages[0]
        name = first.config.name
        if frames and first.config.unet.first_frame_conditioning:  # the base draws the first frame, then the clip
            name = f"{cascade.stages[0].config.name} + {name}"
        reset_peak(device)
        start = time.perf_counter()
        if frames:
            image = cascade.run_clip(text, generators, settings, frames, progress=False, video_text=video_text)
        else:
            image = cascade.run_base(first, text, generators, settings, None, progress=False)
        rows.append({"stage": name, "size": first.config.resolution, "steps": settings.steps[0],
                     "peak_mib": peak_mib(device), "seconds": time.perf_counter() - start})
        for index in range(1, len(cascade.stages)):
            if frames and cascade.stages[index].config.resolution > 256:
                break  # clips stop at 256 px
            reset_peak(device)
            start = time.perf_counter()
            image = cascade.run_super_resolution(index, text, image, generators, settings, progress=False)
            stage = cascade.stages[index]
            rows.append({"stage": stage.config.name, "size": stage.config.resolution, "steps": settings.steps[index],
                         "peak_mib": peak_mib(device), "seconds": time.perf_counter() - start})
    return rows


def main() -> None:
    from stages.registry import PRESETS

    video_presets = sorted(name for name, config in PRESETS.items() if config.frames > 1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "weights" / "shapes")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest is reported")
    parser.add_argument("--steps", type=int, nargs="+", help="steps per stage (default: the release's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--untrained-video", metavar="PRESET", choices=video_presets,
                        help="where the release has no video stage, time clips with this preset's video stage "
                             "built from the base's weights")
    parser.add_argument("--out", type=Path, default=RESULTS / "render.json")
    args = parser.parse_args()

    from cascade.cascade_config import load_cascade_config
    from cascade.pipeline import Cascade

    shipped_video = load_cascade_config(args.checkpoint).video is not None
    load_start = time.perf_counter()
    cascade = Cascade.load(args.checkpoint, video=shipped_video, device=args.device)
    untrained_video = args.untrained_video if not shipped_video else None
    if untrained_video:
        cascade.video = untrained_video_stage(cascade, untrained_video)
    has_video = cascade.video is not None
    load_seconds = time.perf_counter() - load_start
    settings = cascade.settings(steps=args.steps)
    report = {"checkpoint": str(args.checkpoint), "untrained_video": untrained_video,
              "load_seconds": load_seconds, "device": str(cascade.device),
              "machine": machine(cascade.device)}
    for name, frames in (("image", None), ("clip", args.frames))[: 2 if has_video else 1]:
        runs = [timed_stages(cascade, settings, frames) for _ in range(args.repeats)]
        best = min(runs, key=lambda rows: sum(r["seconds"] for r in rows))
        total = sum(r["seconds"] for r in best)
        what = "" if frames is None else f" ({frames} frames)"
        if frames is not None and untrained_video:
            what = f" ({frames} frames, untrained {untrained_video} from the base's weights)"
        print(f"\n{name}{what}: {total:.1f} s in all, "
              f"peak {max(r['peak_mib'] for r in best):.0f} MiB")
        print_table(["stage", "size", "steps", "seconds", "peak MiB"],
                    [[r["stage"], r["size"], r["steps"], round(r["seconds"], 2), round(r["peak_mib"])] for r in best])
        report[name] = {"stages": best, "total_seconds": total, "peak_mib": max(r["peak_mib"] for r in best)}
    write_json(args.out, report)
    print(f"\nwrote {args.out} (loading the cascade took {load_seconds:.1f} s)")


if __name__ == "__main__":
    main()
