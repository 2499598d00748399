"""The training configuration: a YAML file per stage (``configs/shapes/*.yaml``), typed and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cascade.stage import StageConfig
from stages.clip_world import ClipModelConfig
from stages.prior import PriorConfig


@dataclass(frozen=True)
class DataConfig:
    """Where the training shards are and how they are read.

    ``shards``: a folder, glob or ``pipe:`` URL. With ``world_split`` set and the folder missing,
    training first writes ``world_count`` shapes-world samples of ``world_size`` px there
    (clips of ``world_frames`` frames with ``world_clips``). Video stages may also name
    ``image_shards``: a fraction ``image_fraction`` of their batches are then still images
    (joint image-video training), made from the world the same way if missing.
    """

    shards: str = "data/shapes/train-64"
    world_split: Literal["train", "eval", "heldout"] | None = "train"
    world_count: int = 20_000
    world_size: int = 64
    world_clips: bool = False
    world_frames: int = 8
    batch_size: int = 16
    num_workers: int = 1
    shuffle_buffer: int = 512
    crop: int | None = None
    blur_sigma: tuple[float, ...] | None = None
    image_shards: str | None = None
    image_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("world_count", "world_size", "world_frames", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or (self.crop is not None and self.crop < 8):
            raise ValueError(f"num_workers must be >= 0 and crop >= 8, got {self.num_workers} and {self.crop}")
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be between 0 and 1, got {self.image_fraction}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 200
    grad_clip: float = 1.0
    grad_accumulation: int = 1

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.weight_decay < 0 or not self.eps > 0 or self.grad_clip < 0:
            raise ValueError("lr and eps must be > 0, weight_decay and grad_clip >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0 or self.grad_accumulation < 1:
            raise ValueError("warmup_steps must be >= 0 and grad_accumulation >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """One stage's training run.

    ``text_encoder``: the frozen encoder spec (see :mod:`cascade.text.spec`); relative local paths
    are resolved against the repository root. ``deepspeed``: a JSON file with the engine's own
    settings (ZeRO stage, bf16); the optimisation settings here are merged into it.
    ``stage`` configures the diffusion stages (base, sr256, sr1024, video64); the world CLIP
    reads ``clip`` and the diffusion prior ``prior`` instead (None for the other stages).
    """

    stage: StageConfig = field(default_factory=StageConfig)
    clip: ClipModelConfig | None = None
    prior: PriorConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    text_encoder: str | None = None
    init_from: str | None = None
    text_max_length: int | None = None
    deepspeed: str = "configs/deepspeed/zero2_bf16.json"
    seed: int = 0
    max_steps: int = 10_000
    ema_decay: float = 0.999
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    sample_prompts: tuple[str, ...] = (
        "a red sphere on the grass during the day",
        "three glass spheres over the ocean at sunset",
        "a small blue cube to the left of a large yellow star in the desert at night",
        "two green pyramids in the sky during the day",
    )
    sample_steps: int = 25
    sample_guidance: float = 3.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
