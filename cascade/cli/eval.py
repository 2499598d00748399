"""``cascade eval``: how well a cascade draws what it is asked, read back by the world reader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cascade.cli.render import DEFAULT_CASCADE, _numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="render shapes-world prompts, read them back, report per-attribute accuracy",
        description="Renders N fully specified captions of a world split, reads every result with the world "
        "reader and reports per-attribute accuracy and the all-correct rate (JSON, Markdown, sample grid). "
        "--sr adds super-resolution fidelity (PSNR/SSIM against bicubic); --steps-curve the base stage's "
        "all-correct rate against sampler steps (PNG).",
    )
    parser.add_argument("--checkpoint", type=Path, help="a cascade release folder (default: the shipped one)")
    parser.add_argument("--split", default="eval", help="eval or heldout (default eval)")
    parser.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    parser.add_argument("--video", action="store_true", help="evaluate clips (adds motion accuracy)")
    parser.add_argument("--size", type=int, help="evaluate at this size (default: the base stage's)")
    parser.add_argument("--sampler", help="sampler name (default: the release's)")
    parser.add_argument("--steps", type=_numbers(int, "--steps"), help="steps per stage")
    parser.add_argument("--guidance", type=_numbers(float, "--guidance"), help="guidance scale(s)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts rendered together (default 8)")
    parser.add_argument("--sr", nargs="?", const=(), type=_numbers(int, "--sr"), metavar="SIZES",
                        help="also measure super-resolution fidelity: of every SR stage, or of those making "
                        "SIZES (e.g. --sr 256); on the first min(N, 100) scenes")
    parser.add_argument("--steps-curve", type=_numbers(int, "--steps-curve"), help="e.g. 5,10,20,50: all-correct vs steps")
    parser.add_argument("--out", type=Path, default=Path("eval"), help="report folder (default ./eval)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade.errors import UserError
    from cascade.evaluation.cascade_eval import EvalRequest, evaluate_cascade, markdown_kind_table, markdown_table
    from cascade.evaluation.drawn import markdown_drawn_table, markdown_two_groups_table
    from cascade.fileio import atomic_write_text

    folder = args.checkpoint or DEFAULT_CASCADE
    if args.checkpoint is None and not (folder / "cascade.yaml").is_file():
        raise UserError(f"no shipped cascade at {folder}; pass --checkpoint with a cascade release folder")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    request = EvalRequest(checkpoint=folder, split=args.split, n=args.n, video=args.video, size=args.size,
                          sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                          batch_size=args.batch_size, out=args.out)
    if args.sr is not None or args.steps_curve:
        from cascade.pipeline import Cascade

        cascade = Cascade.load(folder)
    if args.sr is not None:
        from cascade.evaluation.sr_fidelity import sr_fidelity, sr_stage_indices

        sr_stages = sr_stage_indices(cascade, args.sr)  # a size it has no stage for fails before any work
    result = evaluate_cascade(request)
    print(markdown_table(result["accuracy"], f"{args.split}: {args.n} prompts at {result['size']} px"))
    print(markdown_kind_table(result["accuracy_by_kind"]))
    if drawn_table := markdown_drawn_table(result["objects_drawn"]):
        print(drawn_table)
    if two_groups_table := markdown_two_groups_table(result["two_groups"]):
        print(two_groups_table)
    if args.sr is not None:
        rows = sr_fidelity(cascade, args.split, min(args.n, 100), args.batch_size,
                           cascade.settings(sampler=args.sampler, steps=args.steps, guidance=args.guidance),
                           stages=sr_stages)
        atomic_write_text(args.out / "sr_fidelity.json", json.dumps(rows, indent=1))
        for row in rows:
            print(f"SR {row['from']}->{row['to']}: PSNR {row['psnr']:.2f} dB (bicubic {row['bicubic_psnr']:.2f}), "
                  f"SSIM {row['ssim']:.3f} (bicubic {row['bicubic_ssim']:.3f})")
    if args.steps_curve:
        from cascade.evaluation.steps_curve import plot_steps_curve, steps_curve

        points = steps_curve(request, list(args.steps_curve), cascade)
        atomic_write_text(args.out / "steps_curve.json", json.dumps(points, indent=1))
        plot_steps_curve(points, args.out / "steps_curve.png", f"{args.split}, {args.n} prompts")
        print("steps -> all-correct: " + ", ".join(f"{p['steps']}: {100 * p['all_correct']:.1f}%" for p in points))
    print(f"wrote the report to {args.out}")
    return 0
