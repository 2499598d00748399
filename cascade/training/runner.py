"""From a stage name and a config to a finished training run: shards, task, loop."""

from __future__ import annotations

from pathlib import Path

from cascade.config import dump_yaml, load_yaml
from cascade.errors import UserError
from cascade.fileio import atomic_write_text
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo, barrier
from cascade.training.engine import repository_root, resolve_path
from cascade.training.loop import RunResult, train

DIFFUSION_STAGES = ("base", "sr256", "sr1024", "video64")


def load_train_config(stage: str, path: Path | None) -> TrainConfig:
    """The config file given, or the shapes-world default of ``stage``."""
    if path is None:
        path = repository_root() / "configs" / "shapes" / f"{stage}.yaml"
        if not path.is_file():
            raise UserError(f"no default config for stage {stage!r} ({path} is missing)")
    return load_yaml(TrainConfig, path)


def ensure_world_shards(config: TrainConfig, dist: DistInfo) -> None:
    """Write the shapes-world training shards named by the config if they are missing (main rank)."""
    data = config.data
    folder = resolve_path(data.shards)
    has_shards = folder.is_dir() and any(folder.glob("*.tar"))
    if dist.is_main and not has_shards and data.world_split is not None and "://" not in data.shards:
        from data_pipeline.world_shards import write_world_shards

        print(f"making {data.world_count} {data.world_split} samples of the shapes world in {folder}")
        write_world_shards(folder, data.world_split, data.world_count, data.world_size,
                           clips=data.world_clips, frames=data.world_frames, maxcount=500)
    barrier()


def build_task(stage: str, config: TrainConfig):
    if stage in DIFFUSION_STAGES:
        from cascade.training.diffusion_task import DiffusionTask

        return DiffusionTask(config)
    raise UserError(f"training stage {stage!r} is not available yet")


def run_training(stage: str, config: TrainConfig, dist: DistInfo, out: Path, max_steps: int, resume: bool) -> RunResult:
    ensure_world_shards(config, dist)
    import torch

    torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run
    task = build_task(stage, config)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(config))
    barrier()
    return train(task, config, dist, out, max_steps, resume)
