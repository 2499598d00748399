"""``cascade eval``: render world prompts, read the pictures back, report per-attribute accuracy.

Prompts are fully specified captions (no dropped words) of scenes ``0 .. n-1`` of a split; every
render is read back with the world reader (:mod:`data_pipeline.world.reader`) and scored against
the scene it was asked for. Reported: accuracy per attribute (time, ground, colour, shape, count,
relation; motion for clips) over the scenes where it applies, and the all-correct rate; per sample
what the reader saw, and for one-group scenes how many objects were drawn per count asked
(:mod:`cascade.evaluation.drawn`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import UserError
from cascade.evaluation.drawn import (
    markdown_drawn_table,
    markdown_two_groups_table,
    objects_drawn,
    reading_summary,
    two_groups_drawn,
)
from cascade.fileio import atomic_write_text
from cascade.images import grid, save_png, save_video, to_uint8

SCORED = ("time", "ground", "colour", "shape", "count", "relation", "motion", "all")


@dataclass(frozen=True)
class EvalRequest:
    checkpoint: Path
    split: str = "eval"
    n: int = 200
    video: bool = False
    size: int | None = None
    sampler: str | None = None
    steps: tuple[int, ...] | None = None
    guidance: tuple[float, ...] | None = None
    batch_size: int = 8
    seed: int = 0
    out: Path | None = None
    caption_style: str = "compact"
    progress: bool = True


def accuracy_table(scores: list[dict[str, bool | None]]) -> dict[str, dict[str, float | int]]:
    """Per attribute: the fraction correct over the samples where it applies, and how many those are."""
    table = {}
    for attribute in SCORED:
        applicable = [s[attribute] for s in scores if s.get(attribute) is not None]
        if applicable:
            table[attribute] = {"accuracy": sum(bool(v) for v in applicable) / len(applicable), "n": len(applicable)}
    return table


def scene_kind(scene: Any) -> str:
    """What a prompt asks for, as the report groups it: "1 object", "2 objects", "3 objects" (one
    group of identical objects) or "2 groups" (two single objects in a relation)."""
    if len(scene.groups) > 1:
        return f"{len(scene.groups)} groups"
    count = scene.groups[0].count
    return f"{count} object{'s' if count > 1 else ''}"


def accuracy_by_kind(scenes: list[Any], scores: list[dict[str, bool | None]]) -> dict[str, dict[str, dict[str, float | int]]]:
    """:func:`accuracy_table` for each :func:`scene_kind` of the scenes: single groups by count, then two groups."""
    kinds: dict[str, list[dict[str, bool | None]]] = {}
    for scene, score in zip(scenes, scores):
        kinds.setdefault(scene_kind(scene), []).append(score)
    return {kind: accuracy_table(kinds[kind]) for kind in sorted(kinds, key=lambda k: (k.endswith("groups"), k))}


def markdown_table(table: dict[str, dict[str, float | int]], title: str) -> str:
    rows = [f"| {name} | {100 * v['accuracy']:.1f}% | {v['n']} |" for name, v in table.items()]
    return f"**{title}**\n\n| attribute | accuracy | n |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def markdown_kind_table(by_kind: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """One row per scene kind, one column per attribute that applies to any of them."""
    columns = [a for a in SCORED if any(a in table for table in by_kind.values())]
    head = "| scene | n | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 2) + "\n"
    rows = []
    for kind, table in by_kind.items():
        cells = [f"{100 * table[a]['accuracy']:.1f}%" if a in table else "-" for a in columns]
        rows.append(f"| {kind} | {table['all']['n']} | " + " | ".join(cells) + " |")
    return "**by scene kind**\n\n" + head + "\n".join(rows) + "\n"


def render_world_prompts(request: EvalRequest, cascade: Any | None = None) -> tuple[list[Any], list[str], np.ndarray, Any]:
    """(scenes, captions, renders uint8 [N, (F,) H, W, 3], the settings used) for the request."""
    from cascade.pipeline import Cascade
    from data_pipeline.world import SPLITS, caption, sample_scene

    if request.split not in SPLITS:
        raise UserError(f"unknown split {request.split!r} (choose from: {', '.join(SPLITS)})")
    if not 1 <= request.n <= 100_000:
        raise UserError(f"--n must be between 1 and 100000, got {request.n}")
    cascade = cascade or Cascade.load(request.checkpoint, size=request.size, video=request.video)
    size = request.size or cascade.sizes[0]
    cascade.check_size(size)
    frames = cascade.video.config.frames if request.video else None
    settings = cascade.settings(sampler=request.sampler, steps=request.steps, guidance=request.guidance)
    scenes = [sample_scene(request.split, seed, clip=request.video, frames=frames or 8) for seed in range(request.n)]
    captions = [caption(scene, style=request.caption_style, seed=scene.seed) for scene in scenes]
    from tqdm import tqdm

    renders = []
    bar = tqdm(total=len(scenes), unit="scene", desc=f"eval {request.split}", disable=not request.progress)
    for start in range(0, len(scenes), request.batch_size):
        chunk = captions[start:start + request.batch_size]
        seeds = [request.seed * 1_000_003 + start + i for i in range(len(chunk))]
        out = cascade.render(chunk, seeds, size, settings, frames=frames, progress=False)[-1]
        renders.append(to_uint8(out))
        bar.update(len(chunk))
    bar.close()
    return scenes, captions, np.concatenate(renders), settings


def read_renders(renders: np.ndarray, video: bool) -> list[Any]:
    """The world reader's :class:`~data_pipeline.world.Reading` of each render (uint8 [N, (F,) H, W, 3])."""
    from data_pipeline.world import read_clip, read_image

    read = read_clip if video else read_image
    return [read(render) for render in renders]


def score_readings(scenes: list[Any], readings: list[Any]) -> list[dict[str, bool | None]]:
    """Per-attribute correctness of each reading against the scene it was asked for."""
    from data_pipeline.world import score_reading

    return [score_reading(reading, scene) for scene, reading in zip(scenes, readings, strict=True)]


def score_renders(scenes: list[Any], renders: np.ndarray, video: bool) -> list[dict[str, bool | None]]:
    """:func:`score_readings` of :func:`read_renders`."""
    return score_readings(scenes, read_renders(renders, video))


def evaluate_cascade(request: EvalRequest) -> dict[str, Any]:
    """Render, read back, score; write JSON, Markdown and a sample grid when ``request.out`` is set."""
    scenes, captions, renders, settings = render_world_prompts(request)
    readings = read_renders(renders, request.video)
    scores = score_readings(scenes, readings)
    table = accuracy_table(scores)
    result = {
        "split": request.split, "n": request.n, "video": request.video, "size": int(renders.shape[-2]),
        "sampler": settings.sampler, "steps": list(settings.steps), "guidance": list(settings.guidance),
        "checkpoint": str(request.checkpoint), "accuracy": table, "accuracy_by_kind": accuracy_by_kind(scenes, scores),
        "objects_drawn": objects_drawn(scenes, readings), "two_groups": two_groups_drawn(scenes, readings, scores),
        "samples": [{"caption": c, "scores": s, "read": reading_summary(r)} for c, s, r in zip(captions, scores, readings)],
    }
    if request.out is not None:
        write_report(request.out, result, renders)
    return result


def write_report(out: Path, result: dict[str, Any], renders: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{result['split']}{'-video' if result['video'] else ''}"
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=1))
    title = f"{result['split']} split, {result['n']} prompts, {result['size']} px, {result['sampler']} {result['steps']}"
    atomic_write_text(out / f"{name}.md", markdown_table(result["accuracy"], title) + "\n"
                      + markdown_kind_table(result["accuracy_by_kind"]) + "\n" + markdown_drawn_table(result["objects_drawn"])
                      + "\n" + markdown_two_groups_table(result["two_groups"]))
    shown = renders[:64]
    if result["video"]:
        save_video(out / f"{name}-grid.gif", np.stack([grid(list(shown[:, f]), columns=8) for f in range(shown.shape[1])]), fps=4)
    else:
        save_png(out / f"{name}-grid.png", grid(list(shown), columns=8))
