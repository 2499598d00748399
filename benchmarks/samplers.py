"""Sampler error against the number of model evaluations, with an exact denoiser.

Data: the 2-D Gaussian mixture of ``cascade.diffusion.gaussian_mixture.example_mixture``, whose
posterior mean E[x0 | x_t] is known in closed form, so the error left is the sampler's own.
Error: sliced 1-Wasserstein distance to a fresh draw of the mixture (the reference line shows the
distance between two fresh draws, the level of finite-sample noise), and the relative covariance error.

    .venv/bin/python benchmarks/samplers.py [--schedule linear] [--n 20000]

Prints a table, writes benchmarks/results/samplers.json and benchmarks/results/samplers.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

from cascade.diffusion import build_schedule  # noqa: E402
from cascade.diffusion.gaussian_mixture import example_mixture, sliced_wasserstein  # noqa: E402
from cascade.sampling import SAMPLER_NAMES, get_sampler, sample  # noqa: E402

EVALUATIONS = (5, 10, 20, 50, 100, 200, 500, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", default="linear", help="linear, cosine or cosine-continuous")
    parser.add_argument("--n", type=int, default=20_000, help="points per sampler run")
    parser.add_argument("--out", type=Path, default=RESULTS / "samplers.json")
    args = parser.parse_args()

    schedule = build_schedule(args.schedule)
    mixture = example_mixture()
    denoiser = mixture.denoiser(schedule)
    truth = mixture.sample(args.n, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(mixture.sample(args.n, torch.Generator().manual_seed(2)), truth)
    covariance = mixture.covariance()
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    rows, results = [], []
    for name in SAMPLER_NAMES:
        spec = get_sampler(name)
        for evaluations in EVALUATIONS:
            steps = (evaluations + spec.evaluations_per_step - 1) // spec.evaluations_per_step
            if steps < 1 or steps > 1000:
                continue
            start = time.perf_counter()
            x = sample(name, denoiser, noise, schedule, steps, generator=torch.Generator().manual_seed(4))
            seconds = time.perf_counter() - start
            sw = sliced_wasserstein(x, truth)
            cov_error = float((torch.cov(x.T) - covariance).norm() / covariance.norm())
            nfe = spec.evaluations(steps)
            rows.append([name, spec.default_plan, nfe, sw, cov_error, round(seconds, 2)])
            results.append(
                {"sampler": name, "plan": spec.default_plan, "evaluations": nfe, "steps": steps,
                 "sliced_w1": sw, "covariance_error": cov_error, "seconds": seconds}
            )
    print_table(["sampler", "plan", "evaluations", "sliced W1", "cov error", "seconds"], rows)
    print(f"reference: two fresh draws of the mixture lie {floor:.4f} apart in sliced W1")
    by = {(r["sampler"], r["evaluations"]): r["sliced_w1"] for r in results}
    if ("dpmpp-2m", 20) in by and ("ddpm", 1000) in by:
        print(f"dpmpp-2m at 20 evaluations: {by[('dpmpp-2m', 20)]:.4f}; ddpm at 1000: {by[('ddpm', 1000)]:.4f}")

    write_json(args.out, {"schedule": args.schedule, "n": args.n, "floor_sliced_w1": floor,
                          "machine": machine(), "results": results})
    plot(results, floor, args.out.with_suffix(".png"), args.schedule)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(results: list[dict], floor: float, path: Path, schedule: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in SAMPLER_NAMES:
        points = [(r["evaluations"], r["sliced_w1"]) for r in results if r["sampler"] == name]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(floor, color="grey", linestyle="--", label="two fresh draws of the mixture")
    ax.set(xscale="log", yscale="log", xlabel="model evaluations", ylabel="sliced W1 to the mixture",
           title=f"Samplers with an exact denoiser ({schedule} schedule)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
