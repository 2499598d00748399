"""What ``cascade render`` does: check the request, run the cascade, write the files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cascade.errors import UserError
from cascade.fileio import atomic_write_text
from cascade.images import VIDEO_SUFFIXES, grid, save_png, save_video, to_uint8

MAX_FRAMES_FACTOR = 2  # temporal layers extrapolate to at most twice the frames they were trained on


def _output_path(args: argparse.Namespace) -> Path:
    out = args.out or Path("clip.gif" if args.video else "render.png")
    suffix = out.suffix.lower()
    allowed = VIDEO_SUFFIXES if args.video else (".png",)
    if suffix not in allowed:
        raise UserError(f"unknown output extension {suffix or '(none)'!r} for {out} (choose from: {', '.join(allowed)})")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    return out


def _frames(args: argparse.Namespace, cascade) -> int | None:
    if not args.video:
        if args.frames is not None or args.fps is not None or args.save_frames:
            raise UserError("--frames, --fps and --save-frames need --video")
        return None
    if args.fps is not None and not 1 <= args.fps <= 120:
        raise UserError(f"fps must be between 1 and 120, got {args.fps}")
    trained = cascade.video.config.frames
    frames = args.frames if args.frames is not None else cascade.config.defaults.frames
    if frames < 1:
        raise UserError(f"--frames must be at least 1, got {frames}")
    if frames > MAX_FRAMES_FACTOR * trained:
        raise UserError(f"--frames {frames} is more than this video stage can make (trained on {trained}; "
                        f"at most {MAX_FRAMES_FACTOR * trained})")
    return frames


def render_command(args: argparse.Namespace, default_cascade: Path) -> int:
    from cascade.pipeline import Cascade
    from cascade.text import validate_prompts

    prompt = validate_prompts([args.prompt])[0]
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    if args.size is not None and args.size < 1:
        raise UserError(f"--size must be a positive number of pixels, got {args.size}")
    out = _output_path(args)
    folder = args.checkpoint or default_cascade
    if args.checkpoint is None and not (folder / "cascade.yaml").is_file():
        raise UserError(f"no shipped cascade at {folder}; pass --checkpoint with a cascade release folder")
    cascade = Cascade.load(folder, size=args.size, video=args.video, device=args.device)
    size = args.size or cascade.sizes[-1]
    cascade.check_size(size)
    frames = _frames(args, cascade)
    settings = cascade.settings(sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    outputs = cascade.render([prompt], [args.seed], size, settings, frames=frames)
    record = {
        "prompt": prompt, "seed": str(args.seed), "sampler": settings.sampler,
        "steps": ",".join(map(str, settings.steps[: len(outputs)])),
        "guidance": ",".join(f"{g:g}" for g in settings.guidance[: len(outputs)]),
        "checkpoint": str(folder), "size": str(size),
    }
    if frames is None:
        save_png(out, to_uint8(outputs[-1][0]), record)
    else:
        fps = args.fps if args.fps is not None else cascade.config.defaults.fps
        save_video(out, to_uint8(outputs[-1][0]), fps=fps)
        atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps({**record, "frames": frames, "fps": fps}, indent=1))
        if args.save_frames:
            for index, frame in enumerate(to_uint8(outputs[-1][0])):
                save_png(out.with_name(f"{out.stem}-frame{index:02d}.png"), frame, record)
    if args.save_stages:
        for stage_output in outputs[:-1]:
            image = to_uint8(stage_output[0])
            side = image.shape[-2]
            picture = image if frames is None else grid(list(image))
            save_png(out.with_name(f"{out.stem}-{side}px.png"), picture, record)
    print(f"wrote {out} ({size} px{'' if frames is None else f', {frames} frames'})")
    return 0
