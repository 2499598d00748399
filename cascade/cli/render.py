"""``cascade render``: a prompt -> a PNG (or a GIF / MP4 clip) through the cascade."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CASCADE = Path(__file__).resolve().parents[2] / "weights" / "shapes"


def _numbers(kind: type, name: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes comma-separated numbers, got {text!r}") from None

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a prompt to an image (or a clip with --video)",
        description="Text -> (prior) -> base -> 256 -> 1024, with a progress bar per stage. The PNG records the "
        "prompt, seed, sampler, steps, guidance and checkpoint in its text chunks; the same seed gives the same image.",
    )
    parser.add_argument("--prompt", required=True, help="what to draw")
    parser.add_argument("--out", type=Path, help="output file (.png; with --video .gif or .mp4)")
    parser.add_argument("--size", type=int, help="64, 256 or 1024 (default: the cascade's largest)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--sampler", help="ddpm, ddpm-large, ddim, dpmpp-2m, euler or heun (default: the release's)")
    parser.add_argument("--steps", type=_numbers(int, "--steps"), help="steps, one value or one per stage: 25,15,10")
    parser.add_argument("--guidance", type=_numbers(float, "--guidance"), help="guidance scale(s), e.g. 3,1.5,1")
    parser.add_argument("--checkpoint", type=Path, help="a cascade release folder (default: the shipped shapes cascade)")
    parser.add_argument("--save-stages", action="store_true", help="also save each stage's output beside --out")
    parser.add_argument("--video", action="store_true", help="render a clip with the video stage")
    parser.add_argument("--frames", type=int, help="frames of the clip (default: the release's)")
    parser.add_argument("--fps", type=int, help="frames per second of the clip (default: the release's)")
    parser.add_argument("--save-frames", action="store_true", help="with --video, also save every frame as PNG")
    parser.add_argument("--device", default="cpu",
                        help="where the diffusion networks run: cpu (default), cuda or cuda:N; a seed draws the "
                        "same noise on every device")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cascade.render import render_command

    return render_command(args, DEFAULT_CASCADE)
