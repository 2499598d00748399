"""``cascade export``: a training run (or one of its checkpoints) -> a release folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a release folder (config.yaml, model.safetensors, ema.safetensors) from a training run",
        description="Export the newest complete checkpoint of a run folder (or the checkpoint folder given) "
        "as a release folder that rendering loads.",
    )
    parser.add_argument("checkpoint", type=Path, help="a run folder of train_stage.py, or one of its checkpoints")
    parser.add_argument("--out", type=Path, required=True, help="the release folder to write")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="weights' dtype (default bf16)")
    parser.add_argument("--ema-only", action="store_true",
                        help="write only the EMA weights (what rendering loads): half the size, for shipping")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade.release import export_run

    out = export_run(args.checkpoint, args.out, args.dtype, ema_only=args.ema_only)
    print(f"exported {args.checkpoint} to {out}")
    return 0
