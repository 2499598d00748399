"""Does a video stage use the first frame it is given? Its x0 error per frame, with and without it.

    .venv/bin/python benchmarks/first_frame_use.py --checkpoint DIR [--clips 16] [--times 0.3,0.6,0.9]

DIR is a cascade folder whose video stage has ``unet.first_frame_conditioning``: the base draws
frame 0 and the video stage is given it, so the stage's x0 estimate of frame 0 should be that
frame at every noise level, and the later frames, which hold the same objects, should gain from it
too. For each of the first CLIPS world clips of the eval split and each noise level (a fraction of
the schedule's time range), the true clip is noised once and denoised twice: with its first frame
given, and without it (the flag channel off). The table gives the mean squared error of the x0
estimate (in [-1, 1] units) of frame 0 and of the later frames, each way, and "frame 0 kept": the
fraction of frame 0's error that the given frame removes (1: the frame is copied, 0: it is not
used). A stage with ``first_frame_residual_scale`` diffuses the change from the first frame, so it
cannot go without the frame: its "none" columns are empty, and its frame 0 is known (error 0).
Half a minute for 16 clips on a CPU. Writes benchmarks/results/first_frame_use.json.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cascade.pipeline import Cascade
    from cascade.stage import DiffusionStage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_clip_probe, print_table, write_json  # noqa: E402


def main() -> None:
    args, fractions = parse_clip_probe(__doc__.split("\n\n")[0],
                                       "a cascade folder whose video stage is conditioned on its first frame",
                                       "eval clips", "0.3,0.6,0.9", "first_frame_use.json")

    import torch

    from cascade.pipeline import Cascade
    from data_pipeline.world import caption, render_clip, sample_scene

    cascade = Cascade.load(args.checkpoint, video=True)
    stage = cascade.video
    if not stage.config.unet.first_frame_conditioning:
        sys.exit(f"first_frame_use.py: error: the video stage in {args.checkpoint} is not conditioned on a first frame")
    size, frames = stage.config.resolution, stage.config.frames
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(len(fractions), 2, frames, dtype=torch.float64)
    for seed in range(args.clips):
        scene = sample_scene("eval", seed, clip=True, frames=frames)
        clip = render_clip(scene, size)
        total += frame_errors(stage, cascade, clip, caption(scene, seed=seed), fractions, generator)
    mean = total / args.clips  # [levels, (given, none), F]
    rows, levels = [], []
    residual = stage.diffuses_residual  # no "none" columns (NaN)

    def shown(value: float) -> str:
        return "-" if residual else f"{value:.5f}"

    for fraction, (given, none) in zip(fractions, mean.tolist()):
        kept = None if residual else 1 - given[0] / none[0]
        later_given, later_none = sum(given[1:]) / (frames - 1), sum(none[1:]) / (frames - 1)
        rows.append([fraction, f"{given[0]:.5f}", shown(none[0]), "-" if kept is None else f"{kept:.1%}",
                     f"{later_given:.5f}", shown(later_none)])
        levels.append({"time": fraction, "given": given, "none": None if residual else none, "frame0_kept": kept})
    print_table(["noise level", "frame 0, given", "frame 0, none", "frame 0 kept", "frames 1+, given",
                 "frames 1+, none"], rows)
    write_json(args.out, {"checkpoint": str(args.checkpoint), "clips": args.clips, "levels": levels,
                          "machine": machine()})


def frame_errors(stage: "DiffusionStage", cascade: "Cascade", clip: "np.ndarray", prompt: str,
                 fractions: list[float], generator: "torch.Generator") -> "torch.Tensor":
    """Mean squared x0 error per frame [len(fractions), 2, F] of one clip (uint8 [F, H, W, 3]) at each
    noise level: [:, 0] with its true first frame given, [:, 1] without (NaN for a stage that diffuses the
    change from the first frame, which cannot go without it); the same noisy clip both ways."""
    import torch

    from cascade.diffusion.forward import q_sample
    from cascade.diffusion.parametrization import to_x0
    from cascade.images import from_uint8
    from cascade.pipeline import compute_context

    x0 = from_uint8(clip[None]).to(cascade.device)  # [1, F, 3, H, W]
    text = replace(cascade.encode_text([prompt], for_video=True), video_mask=torch.ones(1, dtype=torch.bool))
    given = replace(text, first_frame=x0[:, 0])
    residual = stage.diffuses_residual  # it diffuses the change from the first frame: never without it
    target = stage.to_diffused(x0, stage.residual_base(given, x0)) if residual else x0
    out = torch.full((len(fractions), 2, x0.shape[1]), float("nan"), dtype=torch.float64)
    for row, fraction in enumerate(fractions):
        t = torch.full((1,), stage.aug_time(fraction), dtype=torch.float64)
        noise = stage.clip_noise(torch.randn(x0.shape, generator=generator)).to(cascade.device)
        x_t = q_sample(target, t, stage.schedule, noise)
        alpha, sigma = stage.schedule.alpha_sigma(t)
        for column, cond in enumerate((given, None if residual else replace(text, first_frame=None))):
            if cond is None:
                continue
            with torch.inference_mode(), compute_context(cascade.device):
                output = stage.network(x_t, stage.model_time(t).to(x0.device), cond)
            estimate = to_x0(output.float(), x_t, alpha, sigma, stage.config.prediction)
            if residual:  # frame 0 of a stage that knows it is set as sampling sets it: its error is then 0
                estimate = stage.to_image(stage.with_first_frame_known(estimate), cond)
            out[row, column] = ((estimate - x0) ** 2).mean(dim=(0, 2, 3, 4)).double().cpu()
    return out


if __name__ == "__main__":
    main()
