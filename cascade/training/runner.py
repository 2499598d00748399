"""From a stage name and a config to a finished training run: shards, task, loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cascade.config import dump_yaml, from_dict, read_yaml, to_dict
from cascade.errors import UserError, choice_error
from cascade.fileio import atomic_write_text
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo, barrier
from cascade.training.engine import repository_root, resolve_path
from cascade.training.loop import RunResult, train

DIFFUSION_STAGES = ("base", "sr256", "sr1024", "video64")


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def load_train_config(stage: str, path: Path | None) -> TrainConfig:
    """The config file given, or the shapes-world default of ``stage``.

    A file may start from a named stage preset (``preset: NAME``, see :mod:`stages.registry`)
    and override any of its fields under ``stage:``.
    """
    if path is None:
        path = repository_root() / "configs" / "shapes" / f"{stage}.yaml"
        if not path.is_file():
            raise UserError(f"no default config for stage {stage!r} ({path} is missing)")
    raw = read_yaml(path)
    preset = raw.pop("preset", None)
    if preset is not None:
        from stages.registry import PRESET_NAMES, PRESETS

        if preset not in PRESETS:
            raise choice_error("preset", preset, PRESET_NAMES)
        stage_overrides = raw.get("stage", {})
        if not isinstance(stage_overrides, dict):
            raise UserError(f"{path.name}: stage: expected a mapping, got {stage_overrides!r}")
        raw["stage"] = _deep_merge(to_dict(PRESETS[preset]), stage_overrides)
    return from_dict(TrainConfig, raw, where=path.name)


def ensure_world_shards(config: TrainConfig, dist: DistInfo) -> None:
    """Write the shapes-world training shards named by the config if they are missing (main rank)."""
    data = config.data
    wanted = [(data.shards, data.world_clips)]
    if data.image_shards is not None:
        wanted.append((data.image_shards, False))
    for shards, clips in wanted:
        folder = resolve_path(shards)
        has_shards = folder.is_dir() and any(folder.glob("*.tar"))
        if dist.is_main and not has_shards and data.world_split is not None and "://" not in shards:
            from data_pipeline.world_shards import write_world_shards

            kind = f"{data.world_frames}-frame clips" if clips else "images"
            print(f"making {data.world_count} {data.world_split} {kind} of the shapes world in {folder}")
            write_world_shards(folder, data.world_split, data.world_count, data.world_size,
                               clips=clips, frames=data.world_frames, maxcount=500)
    barrier()


def build_task(stage: str, config: TrainConfig):
    if stage in DIFFUSION_STAGES:
        from cascade.training.diffusion_task import DiffusionTask

        return DiffusionTask(config)
    if stage == "clip":
        from cascade.training.clip_task import ClipTask

        return ClipTask(config)
    if stage == "prior":
        from cascade.training.prior_task import PriorTask

        return PriorTask(config)
    raise UserError(f"training stage {stage!r} is not available yet")


def run_training(stage: str, config: TrainConfig, dist: DistInfo, out: Path, max_steps: int, resume: bool,
                 max_seconds: float | None = None) -> RunResult:
    ensure_world_shards(config, dist)
    import torch

    torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run
    # A resumed run takes every weight from its checkpoint, so the release it first started from
    # (init_from) is not read again and need not exist any more.
    task = build_task(stage, dataclasses.replace(config, init_from=None) if resume else config)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(config))
    barrier()
    return train(task, config, dist, out, max_steps, resume, max_seconds)
