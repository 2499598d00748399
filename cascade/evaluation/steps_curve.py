"""All-correct rate of the base stage against sampler steps: a curve to choose the steps by."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cascade.evaluation.cascade_eval import EvalRequest, accuracy_table, render_world_prompts, score_renders


def steps_curve(request: EvalRequest, steps: list[int], cascade: Any) -> list[dict[str, Any]]:
    """For each step count, the base stage's per-attribute accuracy (64 px, no super-resolution)."""
    points = []
    base_size = cascade.sizes[0]
    for count in steps:
        single = replace(request, steps=(count,), size=base_size, video=False)
        scenes, _, renders, _ = render_world_prompts(single, cascade)
        table = accuracy_table(score_renders(scenes, renders, video=False))
        points.append({"steps": count, "all_correct": table["all"]["accuracy"], "accuracy": table})
    return points


def plot_steps_curve(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.fileio import atomic_output

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["steps"] for p in points], [100 * p["all_correct"] for p in points], marker="o")
    ax.set(xscale="log", xlabel="sampler steps (base stage)", ylabel="all-correct rate (%)", title=title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
