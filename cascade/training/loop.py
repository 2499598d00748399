"""The training loop shared by every stage: DeepSpeed steps, EMA, checkpoints, exact resume, logs.

A stage plugs in as a :class:`TrainTask`: the module the engine trains (its ``forward`` returns
per-sample losses), the loader's sizes, the conversion of a loader batch into that forward's
arguments (frozen encoders run there, outside the engine), and a snapshot of samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from cascade.errors import UserError
from cascade.training.checkpoint import find_latest, load_checkpoint, save_checkpoint
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo, all_ranks_agree
from cascade.training.ema import EMA
from cascade.training.engine import build_engine, engine_dtype
from cascade.training.metrics import MetricsLog
from cascade.training.stopping import StopRequests
from stages.conditioning import Conditioning


class TrainTask(Protocol):
    module: nn.Module

    def make_loader(self, dist: DistInfo) -> Any:
        """A :class:`data_pipeline.loader.ShardLoader` for this rank."""

    def inputs(self, batch: dict[str, Any], generator: torch.Generator, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of ``module.forward`` for one loader batch."""

    def snapshot(self, module: nn.Module, step: int, out_dir: Path) -> Path | None:
        """Write samples of ``module`` (holding the EMA weights) and return the file written."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    step: int
    last_loss: float
    seconds: float
    skipped: dict[str, int]
    stopped_by: str | None = None  # "time limit" or a signal's name when the run stopped before max_steps


def endless_batches(loader: Any) -> Any:
    """The loader's batches epoch after epoch, forever (the caller stops at max_steps).

    An epoch resumed from a checkpoint taken after its last batch yields nothing and is simply
    over; only an epoch read from its start without a single batch means the shards are unusable.
    (A loader without a ``position``, as the joint image-video one, is itself endless.)
    """
    while True:
        position = getattr(loader, "position", None)
        from_start, got_any = position is None or not position.consumed, False
        for batch in loader:
            got_any = True
            yield batch
        if from_start and not got_any:
            raise UserError("the training shards yielded no usable sample (see the skip counts)")
        loader.set_epoch(loader.position.epoch)


def train(task: TrainTask, config: TrainConfig, dist: DistInfo, out_dir: Path, max_steps: int, resume: bool,
          max_seconds: float | None = None) -> RunResult:
    """Train ``task`` to ``max_steps`` optimizer steps, checkpointing under ``out_dir/checkpoints``.

    The run stops earlier, at the end of a step and with a checkpoint, once ``max_seconds`` of
    training have passed or on SIGTERM (every rank at the same step); ``stopped_by`` says why.
    """
    torch.manual_seed(config.seed + dist.rank)
    engine = build_engine(task.module, config)
    dtype = engine_dtype(engine)
    ema = EMA(engine.module, config.ema_decay)
    loader = task.make_loader(dist)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + dist.rank)
    checkpoints = out_dir / "checkpoints"

    step = 0
    if resume:
        latest = find_latest(checkpoints)
        if latest is None:
            raise UserError(f"--resume: no complete checkpoint under {checkpoints}")
        step, rank_state, rng = load_checkpoint(latest, engine, dist)
        ema.load(latest / "ema.safetensors")
        loader.load_state_dict(rank_state["loader"])
        generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
    elif find_latest(checkpoints) is not None:
        raise UserError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    metrics = MetricsLog(out_dir, enabled=dist.is_main, resume_step=step if resume else None)

    def checkpoint_now() -> None:
        rank_state = {"loader": loader.state_dict(), "skipped": loader.stats.as_dict(), "step": step}
        rng_state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        save_checkpoint(checkpoints, step, engine, dist, ema, rank_state, rng_state, config.keep_checkpoints)

    progress = tqdm(total=max_steps, initial=step, disable=not dist.is_main, desc=f"train {config.stage.name}", unit="step")
    batches = endless_batches(loader)
    started, start_step, last_loss, window = time.perf_counter(), step, float("nan"), []
    stopped_by: str | None = None
    try:
        with StopRequests(max_seconds) as stop_requests:
            while step < max_steps:
                for _ in range(config.optim.grad_accumulation):
                    kwargs = on_device(task.inputs(next(batches), generator, dtype), engine.device)
                    loss = engine(**kwargs).float().mean()
                    if not all_ranks_agree(math.isfinite(loss.item())):
                        last = find_latest(checkpoints)
                        kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"
                        raise TrainingDiverged(f"loss is not finite at step {step + 1}: training stopped{kept}")
                    engine.backward(loss)
                    engine.step()
                    window.append(loss.item())
                step += 1
                ema.update(engine.module, step)
                last_loss = window[-1]
                progress.update(1)
                progress.set_postfix(loss=f"{last_loss:.4f}")
                stopping = step < max_steps and not all_ranks_agree(stop_requests.reason() is None)
                if stopping:
                    stopped_by = stop_requests.reason() or "a stop on another rank"
                last_step = step == max_steps or stopping
                if step % config.log_every == 0 or last_step:
                    metrics.log(step, {"loss": sum(window) / len(window), "lr": engine.get_lr()[0],
                                       "samples_per_second": _rate(started, step - start_step, config, dist),
                                       "skipped": loader.stats.total})
                    window = []
                if step % config.checkpoint_every == 0 or last_step:
                    checkpoint_now()
                if dist.is_main and (step % config.sample_every == 0 or step == max_steps):
                    _snapshot(task, engine.module, ema, step, out_dir)
                if stopping:
                    break
    finally:
        progress.close()
        metrics.close()
    return RunResult(step, last_loss, time.perf_counter() - started, loader.stats.as_dict(), stopped_by)


def on_device(kwargs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The forward's arguments with every tensor and :class:`Conditioning` on the engine's device
    (the loader, the frozen encoders and the random generator stay on the CPU)."""
    return {name: value.to(device) if isinstance(value, (torch.Tensor, Conditioning)) else value
            for name, value in kwargs.items()}


def _rate(started: float, steps: int, config: TrainConfig, dist: DistInfo) -> float:
    seconds = max(time.perf_counter() - started, 1e-9)
    return steps * config.data.batch_size * config.optim.grad_accumulation * dist.world_size / seconds


def _snapshot(task: TrainTask, live: nn.Module, ema: EMA, step: int, out_dir: Path) -> None:
    """Samples from the EMA weights, through a float32 copy (on the training device) so the training
    weights stay untouched."""
    import copy

    shadow = copy.deepcopy(live).float().eval()
    ema.copy_to(shadow)
    with torch.inference_mode():
        task.snapshot(shadow, step, out_dir / "samples")
