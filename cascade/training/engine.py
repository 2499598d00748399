"""The DeepSpeed engine of a training run: the JSON file's engine settings plus our optimisation settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from cascade.errors import UserError
from cascade.training.config import TrainConfig

#: Settings that the training config owns; a DeepSpeed JSON file must not set them too.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "optimizer", "scheduler", "gradient_clipping")


def repository_root() -> Path:
    return Path(__file__).resolve().parents[2]


def resolve_path(path: str) -> Path:
    """A path as given if it exists from here, else relative to the repository root."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return repository_root() / candidate


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """The engine's settings: the JSON file named by ``config.deepspeed`` plus batch, optimizer,
    warm-up schedule and clipping from ``config``."""
    path = resolve_path(config.deepspeed)
    if not path.is_file():
        raise UserError(f"DeepSpeed config {config.deepspeed!r} does not exist")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"DeepSpeed config {str(path)!r} is not valid JSON: {error}") from None
    clash = [key for key in OWNED_KEYS if key in settings]
    if clash:
        raise UserError(f"{path.name} sets {clash[0]!r}, which the training config controls; remove it from the JSON")
    stage = settings.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise UserError(f"ZeRO stage {stage} is not supported (the EMA needs whole parameters): use 0, 1 or 2")
    o = config.optim
    settings.update(
        train_micro_batch_size_per_gpu=config.data.batch_size,
        gradient_accumulation_steps=o.grad_accumulation,
        gradient_clipping=o.grad_clip,
        optimizer={"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                               "weight_decay": o.weight_decay, "torch_adam": True}},
        scheduler={"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": o.lr,
                                                  "warmup_num_steps": max(1, o.warmup_steps), "warmup_type": "linear"}},
    )
    return settings


def build_engine(module: nn.Module, config: TrainConfig) -> Any:
    """``deepspeed.initialize`` over the trainable parameters of ``module``; returns the engine."""
    import deepspeed

    trainable = [p for p in module.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=trainable, config=deepspeed_config(config))
    return engine


def engine_dtype(engine: Any) -> Any:
    """The dtype the engine computes in (bf16 when enabled)."""
    import torch

    return torch.bfloat16 if engine.bfloat16_enabled() else (torch.float16 if engine.fp16_enabled() else torch.float32)
