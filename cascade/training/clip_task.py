"""Training the world CLIP: the :class:`TrainTask` of ``train_stage.py --stage clip``, and its export.

    python -m cascade.training.clip_task --run runs/clip --out weights/shapes/clip

exports a run's EMA weights as the open_clip ``local-dir:`` folder that the other stages name as
``clip:local-dir:weights/shapes/clip``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from cascade.errors import UserError
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo
from cascade.training.engine import resolve_path
from cascade.training.world_captions import WorldRecaptioner
from stages.clip_world import ClipContrastive, ClipModelConfig, clip_tokenizer, export_clip

#: Samples of the first batch kept to measure in-batch retrieval at each snapshot.
SNAPSHOT_SAMPLES = 128


def clip_config_of(config: TrainConfig) -> ClipModelConfig:
    if config.clip is None:
        raise UserError("stage 'clip' needs a 'clip:' section in its training config (the model's sizes)")
    if config.text_encoder is not None:
        raise UserError("stage 'clip' trains its own text tower: leave 'text_encoder' unset")
    return config.clip


class ClipTask:
    """Trains :class:`stages.clip_world.ClipContrastive` on shards of images and captions."""

    def __init__(self, config: TrainConfig) -> None:
        import torch.distributed as dist

        self.config = config
        self.clip = clip_config_of(config)
        ready = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        self.module = ClipContrastive(self.clip, rank=rank, world_size=world)
        self.tokenizer = clip_tokenizer(self.clip.context_length)
        self.recaption = WorldRecaptioner(self.clip.recaption_prob)
        self.truncated = 0
        self._snapshot_batch: dict[str, Any] | None = None

    def make_loader(self, dist: DistInfo) -> Any:
        from data_pipeline.degrade import StageSizes
        from data_pipeline.loader import make_loader

        d = self.config.data
        return make_loader(
            resolve_path(d.shards), batch_size=d.batch_size, stage=StageSizes(size=self.clip.image_size),
            rank=dist.rank, world_size=dist.world_size, num_workers=d.num_workers, seed=self.config.seed,
            shuffle_buffer=d.shuffle_buffer, drop_last=True,
        )

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """Token ids [B, context_length]; captions longer than the context are cut (and counted)."""
        ids = self.tokenizer(captions)  # [B, ctx]
        self.truncated += int((ids[:, -1] != 0).sum())  # a full row: the caption reached the last slot
        return ids

    def inputs(self, batch: dict[str, Any], generator: torch.Generator, dtype: torch.dtype) -> dict[str, Any]:
        if self._snapshot_batch is None:
            keep = SNAPSHOT_SAMPLES
            self._snapshot_batch = {"image": batch["image"][:keep].clone(), "caption": list(batch["caption"][:keep])}
        keys, captions = list(batch["key"]), list(batch["caption"])
        if self.clip.hard_negative_weight <= 0:
            return {"image": batch["image"].to(dtype), "text": self.tokens(self.recaption(keys, captions, generator))}
        captions, negatives = self.recaption.with_negatives(keys, captions, generator)
        has_negative = torch.tensor([n is not None for n in negatives])
        negative = self.tokens([n if n is not None else c for n, c in zip(negatives, captions)])
        return {"image": batch["image"].to(dtype), "text": self.tokens(captions), "negative": negative,
                "has_negative": has_negative}

    def snapshot(self, module: ClipContrastive, step: int, out_dir: Path) -> Path | None:
        """In-batch retrieval accuracy of the EMA model on the first batch seen (a JSON file)."""
        if self._snapshot_batch is None:
            return None
        module = module.cpu()  # a throwaway float32 copy; the snapshot batch is on the CPU
        images, captions = self._snapshot_batch["image"], self._snapshot_batch["caption"]
        image_features, text_features = module.features(images.float(), self.tokens(captions))
        similarity = text_features @ image_features.T  # [n, n]
        truth = torch.arange(len(captions))
        report = {
            "step": step,
            "candidates": len(captions),
            "text_to_image_top1": float((similarity.argmax(dim=1) == truth).float().mean()),
            "image_to_text_top1": float((similarity.argmax(dim=0) == truth).float().mean()),
            "logit_scale": float(module.model.logit_scale.exp()),
            "truncated_captions": self.truncated,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step-{step:08d}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        return path


# ---------------------------------------------------------------------------- export


def ema_state_of_run(run: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """A run folder's config (the raw mapping of its ``config.yaml``), the EMA weights of its newest
    complete checkpoint, and that checkpoint.

    The config is returned unparsed so that an export reads only its own section (``clip:`` or
    ``prior:``) and keeps working when unrelated parts of the training config change.
    """
    from safetensors.torch import load_file

    from cascade.config import read_yaml
    from cascade.training.checkpoint import find_latest

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a training run folder (no config.yaml)")
    latest = find_latest(run / "checkpoints")
    if latest is None:
        raise UserError(f"no complete checkpoint under {run / 'checkpoints'}")
    return read_yaml(run / "config.yaml"), load_file(str(latest / "ema.safetensors")), latest


def config_section(raw: dict[str, Any], name: str, cls: type, where: str) -> Any:
    """The typed ``name:`` section of a raw training config (a one-line error if it is missing)."""
    from cascade.config import from_dict

    if not isinstance(raw.get(name), dict):
        raise UserError(f"{where} has no '{name}:' section: not a run of that stage")
    return from_dict(cls, raw[name], where=f"{where}: {name}")


def export_run(run: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Export the EMA weights of a ``--stage clip`` run as an open_clip ``local-dir:`` folder."""
    from stages.clip_world import build_clip

    raw, ema, _ = ema_state_of_run(run)
    clip = config_section(raw, "clip", ClipModelConfig, str(Path(run) / "config.yaml"))
    model = build_clip(clip)
    state = {k.removeprefix("model."): v for k, v in ema.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise UserError(f"the EMA weights of {run} do not fit its CLIP config (missing {missing[:1]}, extra {unexpected[:1]})")
    return export_clip(model, clip, out, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.training.clip_task",
                                     description="Export a --stage clip run's EMA weights as an open_clip local-dir folder.")
    parser.add_argument("--run", type=Path, required=True, help="the run folder (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (e.g. weights/shapes/clip)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weights dtype (default bf16)")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run, args.out, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    except UserError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
