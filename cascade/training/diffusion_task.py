"""Training a diffusion stage (base, super-resolution, video): the :class:`TrainTask` of those stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascade.errors import UserError
from cascade.images import grid, save_png, save_video, to_uint8
from cascade.sampling import sample
from cascade.stage import DiffusionStage, check_text_dims
from cascade.training.config import TrainConfig
from cascade.training.distributed import DistInfo
from cascade.training.engine import resolve_path
from stages.conditioning import Conditioning
from stages.unet import FIRST_FRAME_CHANNELS


def load_frozen_text_encoder(spec: str | None, max_length: int | None) -> Any:
    """The frozen text encoder named by a spec (relative paths from the repository root), cached per prompt."""
    if spec is None:
        return None
    from cascade.text import CachedTextEncoder, load_text_encoder

    kind, _, rest = spec.partition(":")
    if kind == "clip" and rest.startswith("local-dir:"):
        spec = f"clip:local-dir:{resolve_path(rest[len('local-dir:'):])}"
    elif kind in ("t5", "hf"):
        spec = f"{kind}:{resolve_path(rest)}"
    return CachedTextEncoder(load_text_encoder(spec, max_length=max_length), max_items=50_000)


def load_decoder_image_encoder(stage: DiffusionStage, text_encoder: str | None) -> Any:
    """For an unCLIP decoder (``unet.image_embed_dim``), the image tower of the same CLIP as its text
    encoder: training conditions on the CLIP embedding of each training image (Ramesh et al. 2022)."""
    dim = stage.config.unet.image_embed_dim
    if dim is None:
        return None
    from cascade.clip_image import load_clip_image_encoder
    from cascade.training.prior_task import clip_folder_of

    encoder = load_clip_image_encoder(clip_folder_of(text_encoder))
    if encoder.embed_dim != dim:
        raise UserError(f"unet.image_embed_dim is {dim} but the CLIP image tower gives {encoder.embed_dim}")
    return encoder


def text_conditioning(encoder: Any, captions: list[str], dtype: torch.dtype) -> Conditioning:
    if encoder is None:
        return Conditioning()
    emb = encoder.encode(captions)
    words = None if emb.words is None else emb.words.to(dtype)
    return Conditioning(text_tokens=emb.tokens.to(dtype), text_mask=emb.mask, pooled=emb.pooled.to(dtype), text_words=words)


#: Parts of parameter names of layers that start as the identity (temporal layers, the zero-initialised
#: word-embedding projection, the context refiner, attention's position projection): a release without
#: them still fits the stage.
_IDENTITY_AT_FIRST = ("temporal", "network.text_words.", "network.text_refiner.", ".attention.positions.")


def initialise_from_release(stage: DiffusionStage, folder: Path) -> None:
    """Start from a released stage's EMA weights; only layers the release lacks may stay new, and
    they must be layers that start as the identity: temporal layers (an image stage initialising its
    video variant), the word-embedding projection (``text_word_dim``, zero at first) or the context
    refiner (``text_context_layers``, the identity at first) or attention's position projection
    (``attention_positions``, zero at first). A video stage
    conditioned on its first frame gets the release's input convolution with zero weights for the frame."""
    from safetensors.torch import load_file

    path = folder / "ema.safetensors"
    if not path.is_file():
        raise UserError(f"init_from: {folder} is not a release folder (no ema.safetensors)")
    weights = load_file(str(path))
    own = stage.state_dict()
    _widen_input_conv(weights, own)
    unexpected = sorted(set(weights) - set(own))
    new = sorted(set(own) - set(weights))
    wrong = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    not_identity = [k for k in new if not any(part in k for part in _IDENTITY_AT_FIRST)]
    if unexpected or wrong or not_identity:
        bad = (unexpected or wrong or not_identity)[0]
        raise UserError(f"init_from: {folder} does not fit stage {stage.config.name!r} (e.g. {bad!r})")
    stage.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)


_INPUT_CONV = "network.input_conv.weight"


def _widen_input_conv(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """An image release's input convolution [C, 3, k, k] widened in place to a first-frame-conditioned
    video stage's [C, 3 + 4, k, k]: the new input channels start at zero, so the stage computes what
    the release did until it learns to read the given frame."""
    if _INPUT_CONV not in weights or _INPUT_CONV not in own:
        return
    theirs, ours = weights[_INPUT_CONV], own[_INPUT_CONV]
    extra = theirs.new_zeros(theirs.shape[0], FIRST_FRAME_CHANNELS, *theirs.shape[2:])
    if torch.Size([theirs.shape[0], theirs.shape[1] + FIRST_FRAME_CHANNELS, *theirs.shape[2:]]) == ours.shape:
        weights[_INPUT_CONV] = torch.cat([theirs, extra], dim=1)


class DiffusionTask:
    """Trains a :class:`DiffusionStage` on shards of images (or clips) and their captions."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        if config.stage.first_frame_residual_scale is not None and config.data.image_shards and config.data.image_fraction:
            raise UserError("stage.first_frame_residual_scale diffuses clips as their change from the first frame, "
                            "which a still image lacks: set data.image_fraction to 0")
        self.module = DiffusionStage(config.stage)
        if config.init_from is not None:
            initialise_from_release(self.module, resolve_path(config.init_from))
        self.encoder = load_frozen_text_encoder(config.text_encoder, config.text_max_length)
        check_text_dims(self.module, self.encoder)
        self.image_encoder = load_decoder_image_encoder(self.module, config.text_encoder)
        self._snapshot_batch: dict[str, Any] | None = None

    def make_loader(self, dist: DistInfo) -> Any:
        """The shard loader; for video stages with ``image_shards``, mixed with still images."""
        from data_pipeline.degrade import StageSizes
        from data_pipeline.loader import make_loader

        s, d = self.config.stage, self.config.data

        def loader(shards: str, frames: int | None) -> Any:
            sizes = StageSizes(size=s.resolution, low_res=s.low_resolution, crop=d.crop,
                               blur_sigma=tuple(d.blur_sigma) if d.blur_sigma else None, frames=frames)
            return make_loader(resolve_path(shards), batch_size=d.batch_size, stage=sizes, rank=dist.rank,
                               world_size=dist.world_size, num_workers=d.num_workers, seed=self.config.seed,
                               shuffle_buffer=d.shuffle_buffer, drop_last=True)

        main = loader(d.shards, s.frames if s.frames > 1 else None)
        if d.image_shards is None or d.image_fraction == 0.0:
            return main
        from data_pipeline.mixed import MixedLoader

        return MixedLoader(main, loader(d.image_shards, None), d.image_fraction, self.config.seed)

    def inputs(self, batch: dict[str, Any], generator: torch.Generator, dtype: torch.dtype) -> dict[str, Any]:
        if self._snapshot_batch is None:
            self._snapshot_batch = {k: (v[:4] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
        video = "frames" in batch
        x0 = (batch["frames"] if video else batch["image"]).to(dtype)
        cond = text_conditioning(self.encoder, list(batch["caption"]), dtype)
        if self.image_encoder is not None:  # unCLIP: the CLIP embedding of the image itself (of a clip's first frame)
            still = batch["frames"][:, 0] if video else batch["image"]
            cond = Conditioning(**{**cond.__dict__, "image_embed": self.image_encoder.encode(still).to(dtype)})
        if self.config.stage.is_super_resolution:
            cond = Conditioning(**{**cond.__dict__, "low_res": batch["low_res"].to(dtype)})
        if video:
            cond = Conditioning(**{**cond.__dict__, "video_mask": torch.ones(x0.shape[0], dtype=torch.bool)})
            if self.config.stage.unet.first_frame_conditioning:  # the clip's own first frame, as the image stage would give it
                cond = Conditioning(**{**cond.__dict__, "first_frame": x0[:, 0]})
        return {"x0": x0, "cond": cond, "generator": generator}

    # ------------------------------------------------------------------ samples

    def snapshot(self, module: DiffusionStage, step: int, out_dir: Path) -> Path | None:
        """Samples for the fixed prompts (base) or the first batch's low-res images (super-resolution)."""
        config = self.config
        device = next(module.parameters()).device  # the training device: the inputs are built on the CPU
        generator = torch.Generator().manual_seed(0)
        size = config.stage.resolution
        if config.stage.is_super_resolution:  # refine the first batch's low-res images (crops, if training on crops)
            if self._snapshot_batch is None:
                return None
            captions = list(self._snapshot_batch["caption"])
            size = self._snapshot_batch["image"].shape[-1]
            cond = text_conditioning(self.encoder, captions, torch.float32)
            low = self._snapshot_batch["low_res"].float()
            aug = torch.full((len(captions),), module.aug_time(config.stage.sample_aug), dtype=torch.float64)
            cond = module.augmented(Conditioning(**{**cond.__dict__, "low_res": low}), aug, generator, size=size)
        elif self.image_encoder is not None or config.stage.unet.first_frame_conditioning:
            # an unCLIP decoder reconstructs the first batch from its embeddings; a video stage moves its first frames
            if self._snapshot_batch is None:
                return None
            captions = list(self._snapshot_batch["caption"])
            still = self._snapshot_batch["frames"][:, 0] if "frames" in self._snapshot_batch else self._snapshot_batch["image"]
            cond = text_conditioning(self.encoder, captions, torch.float32)
            if self.image_encoder is not None:
                cond = Conditioning(**{**cond.__dict__, "image_embed": self.image_encoder.encode(still.float())})
            if config.stage.unet.first_frame_conditioning:
                cond = Conditioning(**{**cond.__dict__, "first_frame": still.float()})
        else:
            captions = list(config.sample_prompts)
            cond = text_conditioning(self.encoder, captions, torch.float32)
        shape = (len(captions), config.stage.frames, 3) if config.stage.frames > 1 else (len(captions), 3)
        noise = module.clip_noise(torch.randn(*shape, size, size, generator=generator)).to(device)
        if config.stage.frames > 1:
            cond = Conditioning(**{**cond.__dict__, "video_mask": torch.ones(len(captions), dtype=torch.bool)})
        cond = cond.to(device)
        guidance = config.sample_guidance if self.encoder is not None else 1.0
        denoiser = module.denoiser(cond, guidance=guidance, threshold="dynamic")
        images = module.to_image(sample("dpmpp-2m", denoiser, noise, module.schedule, config.sample_steps), cond)
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.stage.frames > 1:
            frames = to_uint8(images)  # [B, F, H, W, 3]
            strip = np.stack([grid(list(frames[:, f])) for f in range(frames.shape[1])])
            path = out_dir / f"step-{step:08d}.gif"
            save_video(path, strip, fps=4)
        elif config.stage.is_super_resolution:  # rows of: upsampled low-res | sample | truth
            path = out_dir / f"step-{step:08d}.png"
            low_up = to_uint8(module.upsampled_low_res(self._snapshot_batch["low_res"].float(), size))
            truth = to_uint8(self._snapshot_batch["image"].float())
            rows = [picture for triple in zip(low_up, to_uint8(images), truth) for picture in triple]
            save_png(path, grid(rows, columns=3), {"prompts": " | ".join(captions)})
        else:
            path = out_dir / f"step-{step:08d}.png"
            save_png(path, grid(list(to_uint8(images))), {"prompts": " | ".join(captions)})
        return path
