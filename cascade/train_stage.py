"""Train one stage of the cascade.

    deepspeed cascade/train_stage.py --stage base [--config FILE] [--out DIR] [--max-steps N] [--max-minutes M] [--resume]
    torchrun --nproc_per_node 2 cascade/train_stage.py --stage base ...
    python cascade/train_stage.py --stage base ...          (one process)

With no ``--config`` it trains that stage of the shapes world with ``configs/shapes/STAGE.yaml``,
writing the training shards first if they are missing. ``--max-minutes`` and SIGTERM stop a run
early at the end of a step, with a checkpoint that ``--resume`` continues from (exit status 0 for
the time limit, 143 for SIGTERM).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as a script (the launchers do): import the package, not this folder's modules.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import signal  # noqa: E402

STAGES = ("clip", "prior", "base", "sr256", "sr1024", "video64")


def build_parser() -> argparse.ArgumentParser:
    from cascade.cli import OneLineErrorParser

    parser = OneLineErrorParser(
        prog="train_stage.py",
        description="Train one stage of the cascade (under deepspeed, torchrun or plain python).",
    )
    parser.add_argument("--stage", required=True, choices=STAGES, help="which stage to train")
    parser.add_argument("--config", type=Path, help="a training YAML (default: configs/shapes/STAGE.yaml)")
    parser.add_argument("--out", type=Path, help="run folder: checkpoints, metrics, samples (default: runs/STAGE)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (with a checkpoint)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after this many minutes of training (set-up not counted), with a checkpoint "
                             "to --resume from; SIGTERM (timeout, a scheduler) also stops with one")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    from cascade.training.distributed import configure_environment

    configure_environment()  # before anything imports deepspeed
    from cascade.errors import UserError
    from cascade.training.distributed import init_distributed, shutdown
    from cascade.training.engine import deepspeed_config
    from cascade.training.runner import load_train_config, run_training

    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be > 0, got {args.max_minutes}")
    config = load_train_config(args.stage, args.config)
    deepspeed_config(config)  # check the engine settings before starting processes talking to each other
    out = args.out or Path("runs") / args.stage
    dist = init_distributed()
    try:
        max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
        result = run_training(args.stage, config, dist, out, args.max_steps or config.max_steps, args.resume,
                              max_seconds)
        if dist.is_main:
            stopped = f" (stopped early: {result.stopped_by}; continue with --resume)" if result.stopped_by else ""
            print(f"trained {args.stage} to step {result.step} in {result.seconds:.0f} s{stopped}; last loss "
                  f"{result.last_loss:.4f}; skipped samples: {result.skipped or 'none'}; run folder {out}")
    finally:
        shutdown()
    return 128 + signal.SIGTERM if result.stopped_by == "SIGTERM" else 0


def main(argv: list[str] | None = None) -> int:
    from cascade.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        print(f"train_stage.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        from cascade.cli import describe_os_error

        print(f"train_stage.py: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_stage.py: interrupted (the last complete checkpoint is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
