"""Training the diffusion prior: the :class:`TrainTask` of ``train_stage.py --stage prior``.

The prior learns CLIP image embeddings from CLIP text embeddings of the same CLIP, named by
the config's ``text_encoder: clip:local-dir:DIR``: the text tower of DIR encodes the captions
(per-token states and pooled embedding) and its image tower embeds the images, both frozen and
run on the fly outside the engine. Image embeddings are cached per sample key (the frozen tower
gives the same vector every epoch), so after the first epoch a step costs only the prior.

    python -m cascade.training.prior_task --run runs/prior --out weights/shapes/prior

exports a run's EMA weights as a release folder (``config.yaml``, ``ema.safetensors``, ``release.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from cascade.config import dump_yaml, load_yaml
from cascade.errors import UserError
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo
from cascade.training.engine import resolve_path
from cascade.training.world_captions import WorldRecaptioner
from stages.conditioning import Conditioning
from stages.prior import PriorConfig, PriorStage

SNAPSHOT_SAMPLES = 64


def clip_folder_of(spec: str | None) -> Path:
    """The folder of a ``clip:local-dir:DIR`` spec (relative paths from the repository root)."""
    prefix = "clip:local-dir:"
    if spec is None or not spec.startswith(prefix):
        raise UserError(f"the prior needs text_encoder: clip:local-dir:DIR (the CLIP of its embeddings), got {spec!r}")
    return resolve_path(spec[len(prefix):])


def prior_config_of(config: TrainConfig) -> PriorConfig:
    if config.prior is None:
        raise UserError("stage 'prior' needs a 'prior:' section in its training config")
    return config.prior


def check_prior_dims(prior: PriorConfig, text_encoder: Any, image_encoder: Any) -> None:
    """The prior's widths against the CLIP it reads (a one-line error on a mismatch)."""
    wants = {"text_dim": text_encoder.dim, "embed_dim": text_encoder.pooled_dim}
    for name, value in wants.items():
        if getattr(prior, name) != value:
            raise UserError(f"prior.{name} is {getattr(prior, name)} but the CLIP gives {value}")
    if image_encoder.embed_dim != prior.embed_dim:
        raise UserError(f"prior.embed_dim is {prior.embed_dim} but the CLIP image tower gives {image_encoder.embed_dim}")
    if prior.text_length < text_encoder.max_length:
        raise UserError(f"prior.text_length {prior.text_length} is less than the CLIP's {text_encoder.max_length} tokens")


def text_condition(encoder: Any, captions: list[str], dtype: torch.dtype) -> Conditioning:
    emb = encoder.encode(captions)
    return Conditioning(text_tokens=emb.tokens.to(dtype), text_mask=emb.mask, pooled=emb.pooled.to(dtype))


class PriorTask:
    """Trains a :class:`stages.prior.PriorStage` on (caption, image) shards through a frozen CLIP."""

    def __init__(self, config: TrainConfig) -> None:
        from cascade.clip_image import load_clip_image_encoder
        from cascade.training.diffusion_task import load_frozen_text_encoder

        self.config = config
        self.prior = prior_config_of(config)
        folder = clip_folder_of(config.text_encoder)
        self.module = PriorStage(self.prior)
        self.text_encoder = load_frozen_text_encoder(config.text_encoder, config.text_max_length)
        self.image_encoder = load_clip_image_encoder(folder)
        check_prior_dims(self.prior, self.text_encoder, self.image_encoder)
        self._image_cache: dict[str, torch.Tensor] = {}
        self.recaption = WorldRecaptioner(self.prior.recaption_prob)
        self._snapshot_batch: dict[str, Any] | None = None

    def make_loader(self, dist: DistInfo) -> Any:
        from data_pipeline.degrade import StageSizes
        from data_pipeline.loader import make_loader

        d = self.config.data
        return make_loader(
            resolve_path(d.shards), batch_size=d.batch_size, stage=StageSizes(size=self.image_encoder.image_size),
            rank=dist.rank, world_size=dist.world_size, num_workers=d.num_workers, seed=self.config.seed,
            shuffle_buffer=d.shuffle_buffer, drop_last=True,
        )

    def image_embeddings(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """Unit CLIP embeddings [B, E] of the batch's images, computed once per sample key."""
        missing = [i for i, key in enumerate(keys) if key not in self._image_cache]
        if missing:
            fresh = self.image_encoder.encode(images[missing])  # [m, E]
            for i, value in zip(missing, fresh):
                self._image_cache[keys[i]] = value.clone()
        return torch.stack([self._image_cache[key] for key in keys])  # [B, E]

    def inputs(self, batch: dict[str, Any], generator: torch.Generator, dtype: torch.dtype) -> dict[str, Any]:
        captions, keys = list(batch["caption"]), list(batch["key"])
        embeds = self.image_embeddings(batch["image"], keys)  # [B, E]
        if self._snapshot_batch is None:
            self._snapshot_batch = {"caption": captions[:SNAPSHOT_SAMPLES], "embed": embeds[:SNAPSHOT_SAMPLES].clone()}
        cond = text_condition(self.text_encoder, self.recaption(keys, captions, generator), dtype)
        return {"x0": embeds.to(dtype), "cond": cond, "generator": generator}

    def snapshot(self, module: PriorStage, step: int, out_dir: Path) -> Path | None:
        """Cosine similarity of sampled embeddings to the true image embeddings on the first batch,
        against the text-embedding baseline (a JSON file)."""
        if self._snapshot_batch is None:
            return None
        module = module.cpu()  # a throwaway float32 copy; the snapshot batch is on the CPU
        captions, truth = self._snapshot_batch["caption"], self._snapshot_batch["embed"]
        cond = text_condition(self.text_encoder, captions, torch.float32)
        generator = torch.Generator().manual_seed(0)
        sampled = module.sample(cond, len(captions), steps=self.config.sample_steps,
                                guidance=self.config.sample_guidance, generator=generator)  # [n, E]
        text = torch.nn.functional.normalize(cond.pooled, dim=-1)
        report = {"step": step, "samples": len(captions),
                  "cosine_prior": float((sampled * truth).sum(-1).mean()),
                  "cosine_text_baseline": float((text * truth).sum(-1).mean())}
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"step-{step:08d}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        return path


# ---------------------------------------------------------------------------- release folder
#
# A prior release is a folder, like a diffusion stage's (cascade/release.py):
#     config.yaml        the PriorConfig (typed; unknown keys are an error)
#     ema.safetensors    the EMA weights
#     release.json       {"kind": "prior", "step": N, "dtype": "bf16", "text_encoder": "clip:local-dir:..."}

RELEASE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def export_run(run: Path, out: Path, dtype: str = "bf16") -> Path:
    """Write the release folder of a ``--stage prior`` run from its newest checkpoint's EMA weights."""
    from safetensors.torch import save

    from cascade.fileio import atomic_write_bytes, atomic_write_text
    from cascade.training.clip_task import config_section, ema_state_of_run

    if dtype not in RELEASE_DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (choose from: {', '.join(RELEASE_DTYPES)})")
    raw, ema, checkpoint = ema_state_of_run(run)
    prior = config_section(raw, "prior", PriorConfig, str(Path(run) / "config.yaml"))
    clip_folder_of(raw.get("text_encoder"))  # a prior names the CLIP it was trained on
    PriorStage(prior).load_state_dict(ema, strict=True)  # the weights fit the config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cast = RELEASE_DTYPES[dtype]
    state = {k: v.to(cast).contiguous() for k, v in ema.items()}
    atomic_write_bytes(out / "ema.safetensors", save(state, metadata={"format": "pt"}))
    atomic_write_text(out / "config.yaml", dump_yaml(prior))
    step = int((checkpoint / "COMPLETE").read_text().strip() or 0)
    info = {"kind": "prior", "step": step, "dtype": dtype, "text_encoder": raw["text_encoder"]}
    atomic_write_text(out / "release.json", json.dumps(info, indent=2) + "\n")
    return out


def load_prior(folder: Path) -> tuple[PriorStage, str]:
    """A prior (float32, eval mode) and the text-encoder spec of its CLIP, from a release folder
    (:func:`export_run`) or a run folder (its newest checkpoint's EMA weights)."""
    from safetensors.torch import load_file

    from cascade.training.clip_task import config_section, ema_state_of_run

    folder = resolve_path(str(folder))
    if (folder / "release.json").is_file():
        info = json.loads((folder / "release.json").read_text())
        if info.get("kind") != "prior":
            raise UserError(f"{folder} is a release of a {info.get('kind')!r}, not of a prior")
        config = load_yaml(PriorConfig, folder / "config.yaml")
        state, spec = load_file(str(folder / "ema.safetensors")), info["text_encoder"]
    else:
        raw, state, _ = ema_state_of_run(folder)
        config = config_section(raw, "prior", PriorConfig, str(folder / "config.yaml"))
        spec = raw.get("text_encoder")
    clip_folder_of(spec)
    stage = PriorStage(config)
    stage.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return stage.float().eval(), spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.training.prior_task",
                                     description="Export a --stage prior run's EMA weights as a release folder.")
    parser.add_argument("--run", type=Path, required=True, help="the run folder (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (e.g. weights/shapes/prior)")
    parser.add_argument("--dtype", choices=tuple(RELEASE_DTYPES), default="bf16", help="weights dtype (default bf16)")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run, args.out, args.dtype)
    except UserError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

