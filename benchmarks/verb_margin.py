"""Does the video stage read the motion verb? A diffusion classifier over the five motions.

    .venv/bin/python benchmarks/verb_margin.py --checkpoint DIR [--clips 16] [--times 0.5,0.7,0.85]

DIR is a cascade folder with a video stage. For each of the first CLIPS world clips of the eval split,
the caption is written five times, once with each motion for the first group (same phrasing), and
the stage's denoising error on the true clip is measured under each caption, with the same noise
and at the same noise levels (fractions of the schedule's time range). A stage that reads the verb
denoises its clip best under the caption with the true motion (Li et al. 2023, "Your Diffusion Model
is Secretly a Zero-Shot Classifier"): "verb accuracy" is how often it does (chance: 1 in 5), and
"margin" is the mean relative error increase of a wrong verb over the true one.

This takes a minute or two on a CPU, where rendering clips and reading them back
(benchmarks/motion_verbs.py) takes several, and it says whether the verb is read before sampled
clips can show it. Prints a table (per motion of the first group) and writes
benchmarks/results/verb_margin.json.
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
    args, fractions = parse_clip_probe(__doc__.split("\n\n")[0], "a cascade folder with a video stage",
                                       "eval clips to classify", "0.5,0.7,0.85", "verb_margin.json")

    import torch

    from cascade.pipeline import Cascade
    from cascade.training.world_captions import with_attribute
    from data_pipeline.world import caption, render_clip, sample_scene
    from data_pipeline.world.constants import MOTIONS

    cascade = Cascade.load(args.checkpoint, video=True)
    stage = cascade.video
    size, frames = stage.config.resolution, 8
    rows, results = {motion: [0, 0] for motion in MOTIONS}, []
    generator = torch.Generator().manual_seed(0)
    for seed in range(args.clips):
        scene = sample_scene("eval", seed, clip=True, frames=frames)
        captions = [caption(with_attribute(scene, "motion", motion, 0), seed=seed) for motion in MOTIONS]
        truth = MOTIONS.index(scene.groups[0].motion)
        errors = clip_errors(stage, cascade, render_clip(scene, size), captions, fractions, generator)  # [5]
        guess = int(errors.argmin())
        wrong = torch.cat([errors[:truth], errors[truth + 1:]])
        results.append({"seed": seed, "captions": captions, "motion": MOTIONS[truth], "guess": MOTIONS[guess],
                        "errors": [round(float(e), 6) for e in errors],
                        "margin": float((wrong / errors[truth] - 1).mean())})
        rows[MOTIONS[truth]][0] += int(guess == truth)
        rows[MOTIONS[truth]][1] += 1
    right = sum(r["motion"] == r["guess"] for r in results)
    margin = sum(r["margin"] for r in results) / len(results)
    print_table(["first group's motion", "clips", "classified right"],
                [[motion, seen, hit] for motion, (hit, seen) in rows.items() if seen])
    print(f"verb accuracy: {right} of {len(results)} clips (chance: 1 in {len(MOTIONS)}); "
          f"mean margin of a wrong verb: {margin:+.2%}")
    write_json(args.out, {"checkpoint": str(args.checkpoint), "times": fractions, "right": right,
                          "clips": len(results), "mean_margin": margin, "results": results, "machine": machine()})


def clip_errors(stage: "DiffusionStage", cascade: "Cascade", clip: "np.ndarray", captions: list[str],
                fractions: list[float], generator: "torch.Generator") -> "torch.Tensor":
    """The stage's mean squared denoising error [len(captions)] on one clip (uint8 [F, H, W, 3]) under each
    caption, with one noise draw per noise level shared by all captions and the true first frame given
    (a stage diffusing the change from the first frame is scored on that change)."""
    import torch

    from cascade.diffusion.forward import q_sample
    from cascade.diffusion.losses import simple_loss
    from cascade.images import from_uint8
    from cascade.pipeline import compute_context

    x0 = from_uint8(clip[None]).expand(len(captions), -1, -1, -1, -1).to(cascade.device)  # [K, F, 3, H, W]
    text = cascade.encode_text(captions, for_video=True)
    cond = replace(text, video_mask=torch.ones(len(captions), dtype=torch.bool))
    if stage.config.unet.first_frame_conditioning:
        cond = replace(cond, first_frame=x0[:, 0])
    target = stage.to_diffused(x0, stage.residual_base(cond, x0)) if stage.diffuses_residual else x0
    total = torch.zeros(len(captions))
    for fraction in fractions:
        t = torch.full((len(captions),), stage.aug_time(fraction), dtype=torch.float64)
        noise = stage.clip_noise(torch.randn(x0[:1].shape, generator=generator)).expand_as(x0).to(cascade.device)
        with torch.inference_mode(), compute_context(cascade.device):
            output = stage.network(q_sample(target, t, stage.schedule, noise), stage.model_time(t).to(x0.device), cond)
        alpha, sigma = stage.schedule.alpha_sigma(t)
        c = stage.config
        output, target_frames, noise = stage.learned_frames(output.float(), target, noise)  # as training scores them
        total += simple_loss(output, target_frames, noise, alpha, sigma, stage.schedule.log_snr(t), c.prediction,
                             "none").cpu()
    return total / len(fractions)


if __name__ == "__main__":
    main()
