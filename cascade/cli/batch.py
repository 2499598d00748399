"""``cascade batch``: render every prompt of a file, resumably, spread over the launcher's ranks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cascade.cli.render import DEFAULT_CASCADE, _numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="render all prompts of a .txt/.jsonl/.csv file into a folder (resumable, multi-rank)",
        description="Each output's seed depends only on (--seed, item id, index), so results do not depend on "
        "batching or ranks. Rerunning the same command skips finished outputs; under torchrun or the "
        "deepspeed launcher the outputs are split over the ranks. --compile is not offered: on a 2-core CPU "
        "torch.compile took about 60 s per shape and made the base U-Net slower, not faster "
        "(benchmarks/unet_vs_diffusers.py --compile).",
    )
    parser.add_argument("--prompts", type=Path, required=True, help=".txt (one prompt a line), .jsonl or .csv")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--per-prompt", type=int, default=1, help="outputs per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="job seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts rendered together (default 4)")
    parser.add_argument("--size", type=int, help="64, 256 or 1024 (default: the cascade's largest)")
    parser.add_argument("--sampler", help="sampler name (default: the release's)")
    parser.add_argument("--steps", type=_numbers(int, "--steps"), help="steps, one value or one per stage")
    parser.add_argument("--guidance", type=_numbers(float, "--guidance"), help="guidance scale(s)")
    parser.add_argument("--video", action="store_true", help="render clips (GIF) with the video stage")
    parser.add_argument("--frames", type=int, help="frames per clip")
    parser.add_argument("--format", default="png", choices=("png", "webdataset"),
                        help="png files + manifest.jsonl, or also webdataset shards ready to train on")
    parser.add_argument("--checkpoint", type=Path, help="a cascade release folder (default: the shipped one)")
    parser.add_argument("--force", action="store_true", help="replace another job's outputs in --out")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade.batchjob import JobRequest, run_job
    from cascade.errors import UserError

    folder = args.checkpoint or DEFAULT_CASCADE
    if args.checkpoint is None and not (folder / "cascade.yaml").is_file():
        raise UserError(f"no shipped cascade at {folder}; pass --checkpoint with a cascade release folder")
    summary = run_job(JobRequest(
        prompts=args.prompts, out=args.out, checkpoint=folder, per_prompt=args.per_prompt, seed=args.seed,
        batch_size=args.batch_size, size=args.size, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
        video=args.video, frames=args.frames, format=args.format, force=args.force,
    ))
    for rejected in sorted(summary.rejected, key=lambda r: r.line):
        print(f"line {rejected.line}: skipped: {rejected.reason}", file=sys.stderr)
    for failure in summary.failed:
        print(f"failed: {failure}", file=sys.stderr)
    print(summary.line())
    return 0
