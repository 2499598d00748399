"""A stage's training step (forward, loss, backward) with channels-last against contiguous activations.

    .venv/bin/python benchmarks/train_step.py [--preset shapes-video64] [--batch 8] [--rounds 4] [--device cuda]

The stage's weights are bf16 and contiguous, as DeepSpeed's bf16 engine holds them; the U-Net makes
its activations channels-last at its input unless ``channels_last_activations`` is off. Both
variants run interleaved, round by round, on the same draws; the best round of each is kept (other
processes only ever slow a round down). Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402
from measure import synchronized  # noqa: E402

from cascade.device import checked_device, tune_allocator  # noqa: E402
from cascade.stage import DiffusionStage  # noqa: E402
from stages.conditioning import Conditioning  # noqa: E402
from stages.registry import PRESETS  # noqa: E402


def batch_for(stage: DiffusionStage, batch: int, device: torch.device) -> tuple[torch.Tensor, Conditioning]:
    """Clean samples x0 ([B, 3, H, W], or [B, F, 3, H, W] for a video stage) and their conditioning."""
    c, u = stage.config, stage.config.unet
    g = torch.Generator().manual_seed(0)
    frames = (c.frames,) if c.frames > 1 else ()
    x0 = torch.randn(batch, *frames, 3, c.resolution, c.resolution, generator=g)
    cond = Conditioning(
        text_tokens=torch.randn(batch, 32, u.text_dim, generator=g) if u.text_dim else None,
        text_mask=torch.ones(batch, 32, dtype=torch.bool) if u.text_dim else None,
        pooled=torch.randn(batch, u.pooled_dim, generator=g) if u.pooled_dim else None,
        video_mask=torch.ones(batch, dtype=torch.bool) if frames else None,
    )
    if c.is_super_resolution:
        cond = Conditioning(**{**cond.__dict__, "low_res": torch.randn(batch, *frames, 3, c.low_resolution,
                                                                       c.low_resolution, generator=g)})
    return x0.to(device, torch.bfloat16), cond.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shapes-video64", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_step.json")
    args = parser.parse_args()
    device = checked_device(args.device)
    tune_allocator()

    stage = DiffusionStage(PRESETS[args.preset]).to(device, torch.bfloat16).train()
    x0, cond = batch_for(stage, args.batch, device)

    def step(channels_last: bool, seed: int):
        def run() -> None:
            stage.network.channels_last_activations = channels_last
            stage(x0, cond, torch.Generator().manual_seed(seed)).float().mean().backward()
            stage.zero_grad(set_to_none=True)

        return synchronized(run, device)

    variants = {"channels-last": True, "contiguous": False}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for name, channels_last in variants.items():  # warm-up
        step(channels_last, 0)()
    for round_ in range(args.rounds):
        for name, channels_last in variants.items():
            start = time.perf_counter()
            step(channels_last, round_ + 1)()
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(v) for name, v in seconds.items()}
    rows = [[name, round(best[name], 3), round(args.batch / best[name], 2), f"{best['contiguous'] / best[name]:.2f}x"]
            for name in variants]
    print(f"{args.preset}, batch {args.batch}, bf16 weights, {device}")
    print_table(["activations", "seconds/step", "samples/s", "speed-up"], rows)
    write_json(args.out, {"preset": args.preset, "batch": args.batch, "rounds": args.rounds, "device": str(device),
                          "seconds": seconds, "best": best, "machine": machine(device)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
