"""The cascade: text -> (prior) -> base -> super-resolution stages, for images and clips.

Every sample has its own random generator, seeded from its own seed and used in a fixed order
through all the stages, so an image depends only on (prompt, seed, settings), never on which
other prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from cascade.cascade_config import CascadeConfig, load_cascade_config, resolve_encoder_spec
from cascade.device import checked_device, prepare_for_inference
from cascade.errors import UserError
from cascade.release import load_stage
from cascade.sampling import get_sampler, sample
from cascade.sampling.guidance import check_guidance_scale
from cascade.sampling.noise import randn
from cascade.stage import DiffusionStage, check_text_dims
from stages.conditioning import Conditioning


@dataclass(frozen=True)
class RenderSettings:
    """Sampling settings, one entry per stage run (base first)."""

    sampler: str
    steps: tuple[int, ...]
    guidance: tuple[float, ...]
    sr_aug: float
    threshold: str | None
    prior_steps: int = 16
    prior_guidance: float = 2.0


def compute_context(device: torch.device | str = "cpu") -> object:
    """bf16 autocast where ``device`` runs bf16 fast (a CPU with AMX / AVX512-BF16, a CUDA GPU with
    bf16), else nothing."""
    from cascade.device import autocast

    return autocast(device)


class Cascade:
    """A loaded cascade release. Build it with :meth:`load`."""

    def __init__(self, folder: Path, config: CascadeConfig, encoder: object, stages: list[DiffusionStage],
                 video: DiffusionStage | None, prior: object | None = None,
                 device: torch.device | str = "cpu", video_encoder: object | None = None) -> None:
        self.folder, self.config, self.encoder = folder, config, encoder
        self.video_encoder = video_encoder  # None: the video stage reads ``encoder``
        self.stages, self.video, self.prior = stages, video, prior
        self.device = torch.device(device)

    @classmethod
    def load(cls, folder: Path, *, size: int | None = None, video: bool = False,
             device: torch.device | str = "cpu") -> "Cascade":
        """Load the text encoder and the stages needed to reach ``size`` (all if None); the diffusion
        networks run on ``device`` (the text encoder stays on the CPU: it runs once per prompt).
        Random draws are made on the CPU from per-sample generators, so a seed gives the same
        noise on every device."""
        from cascade.text import CachedTextEncoder, load_text_encoder

        device = checked_device(device)
        folder = Path(folder)
        config = load_cascade_config(folder)
        prior = None
        if config.prior is not None:  # the unCLIP path: text -> prior -> CLIP image embedding -> decoder
            from cascade.training.prior_task import load_prior

            if not (folder / config.prior).is_dir():
                raise UserError(f"the prior folder {folder / config.prior} named in cascade.yaml does not exist")
            prior = load_prior(folder / config.prior)[0]
        base = load_stage(folder / config.base)
        stages = [base]
        for name in config.super_resolution:
            if size is not None and stages[-1].config.resolution >= size:
                break
            stages.append(load_stage(folder / name))
        video_stage = None
        if video:
            if config.video is None:
                raise UserError(f"the cascade in {folder} has no video stage")
            video_stage = load_stage(folder / config.video)
        def encoder_of(spec: str) -> CachedTextEncoder:
            resolved = resolve_encoder_spec(spec, folder)
            return CachedTextEncoder(load_text_encoder(resolved, max_length=config.text_max_length), max_items=4096)

        encoder = encoder_of(config.text_encoder)
        video_encoder = encoder_of(config.video_text_encoder) if video_stage and config.video_text_encoder else None
        for stage, reads in [*((stage, encoder) for stage in stages), (video_stage, video_encoder or encoder)]:
            if stage is not None and (stage.config.unet.text_dim or stage.config.unet.pooled_dim):
                check_text_dims(stage, reads)  # a stage that reads text reads this encoder's widths
        for stage in [*stages, video_stage]:
            if stage is not None:  # bf16 weights where the device runs bf16 fast, channels-last
                prepare_for_inference(stage, device)
        if prior is not None:
            prior.to(device)
        return cls(folder, config, encoder, stages, video_stage, prior, device, video_encoder)

    # ------------------------------------------------------------------ settings

    @property
    def sizes(self) -> list[int]:
        return [stage.config.resolution for stage in self.stages]

    def check_size(self, size: int) -> int:
        """The number of stages to run for ``size``; a size the cascade cannot make is a one-line error."""
        if size not in self.sizes:
            raise UserError(f"this cascade renders {', '.join(map(str, self.sizes))} px, not {size}")
        return self.sizes.index(size) + 1

    def settings(self, *, sampler: str | None = None, steps: Sequence[int] | None = None,
                 guidance: Sequence[float] | None = None, sr_aug: float | None = None) -> RenderSettings:
        """Settings with the release's defaults filled in; a single value applies to every stage."""
        d = self.config.defaults
        n = len(self.stages)
        sampler = d.sampler if sampler is None else sampler
        get_sampler(sampler)
        steps = _per_stage("steps", steps, n) if steps else _defaults("steps", d.steps, n)
        guidance = _per_stage("guidance", guidance, n) if guidance else _defaults("guidance", d.guidance, n)
        guidance = tuple(check_guidance_scale(g) for g in guidance)
        sr_aug = d.sr_aug if sr_aug is None else sr_aug
        if not 0.0 <= sr_aug <= 1.0:
            raise UserError(f"the noise augmentation level must be between 0 and 1, got {sr_aug}")
        for stage, count in zip(self.stages, steps):
            stage.schedule.validate_steps(count)
        if self.prior is not None:
            self.prior.schedule.validate_steps(d.prior_steps)
        return RenderSettings(sampler, tuple(steps), guidance, sr_aug, d.threshold, d.prior_steps,
                              check_guidance_scale(d.prior_guidance))

    # ------------------------------------------------------------------ rendering

    def render(self, prompts: Sequence[str], seeds: Sequence[int], size: int, settings: RenderSettings,
               *, frames: int | None = None, progress: bool = True) -> list[torch.Tensor]:
        """Images (or clips, with ``frames``) for ``prompts``; one output per stage run, each
        [B, 3, H, W] (clips [B, F, 3, H, W]) in [-1, 1] on the CPU, the last at ``size`` px."""
        count = self.check_size(size)
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        text = self.encode_text(prompts)
        video_text = self.encode_text(prompts, for_video=True) if frames is not None else None
        outputs: list[torch.Tensor] = []
        with torch.inference_mode(), compute_context(self.device):
            if self.prior is not None:
                text = replace(text, image_embed=self.image_embedding(text, generators, settings))
            if frames is None:
                outputs.append(self.run_base(self.stages[0], text, generators, settings, None, progress))
            else:
                outputs.append(self.run_clip(text, generators, settings, frames, progress, video_text))
            for index in range(1, count):
                outputs.append(self.run_super_resolution(index, text, outputs[-1], generators, settings, progress))
        return [output.cpu() for output in outputs]

    def encode_text(self, prompts: Sequence[str], *, for_video: bool = False) -> Conditioning:
        """The text conditioning of ``prompts``: tokens [B, L, D], mask [B, L], pooled [B, D], words [B, L, D_words];
        ``for_video``: as the video stage reads them (through ``video_text_encoder`` when the cascade has one)."""
        encoder = self.video_encoder if for_video and self.video_encoder is not None else self.encoder
        embedding = encoder.encode(list(prompts))
        text = Conditioning(text_tokens=embedding.tokens, text_mask=embedding.mask, pooled=embedding.pooled,
                            text_words=embedding.words)
        return text.to(self.device)

    def image_embedding(self, text: Conditioning, generators: list[torch.Generator],
                        settings: RenderSettings) -> torch.Tensor:
        """unCLIP: the prior's CLIP image embeddings [B, E] (unit norm) for the text, one generator per sample."""
        prior = self.prior
        noise = randn((len(generators), prior.config.embed_dim), generators, device=self.device)
        denoiser = prior.denoiser(text, guidance=settings.prior_guidance)
        z0 = sample("ddim", denoiser, noise, prior.schedule, settings.prior_steps)
        return prior.from_diffusion(z0)

    def refine(self, index: int, prompts: Sequence[str], low: torch.Tensor, seeds: Sequence[int],
               settings: RenderSettings, *, progress: bool = False) -> torch.Tensor:
        """Run super-resolution stage ``index`` (1 = the first after the base) on given low-res
        images [B, 3, h, w] in [-1, 1]; returns [B, 3, H, W] on the CPU."""
        if not 1 <= index < len(self.stages):
            raise UserError(f"this cascade has no super-resolution stage {index}")
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        text = self.encode_text(prompts)
        with torch.inference_mode(), compute_context(self.device):
            return self.run_super_resolution(index, text, low.to(self.device), generators, settings, progress).cpu()

    def _sample(self, stage: DiffusionStage, cond: Conditioning, noise: torch.Tensor, index: int,
                settings: RenderSettings, generators: list[torch.Generator], progress: bool) -> torch.Tensor:
        steps = settings.steps[index]
        spec = get_sampler(settings.sampler)
        bar = tqdm(total=steps, desc=f"{stage.config.name} {stage.config.resolution}px", unit="step",
                   disable=not progress, leave=False)
        denoiser = stage.denoiser(cond, guidance=settings.guidance[index], threshold=settings.threshold)
        generator = generators if spec.adds_noise else None
        out = sample(settings.sampler, denoiser, noise, stage.schedule, steps, generator=generator,
                     frame_correlation=stage.config.frame_noise_correlation, callback=lambda *_: bar.update(1))
        bar.close()
        return stage.to_image(out, cond).float().clamp(-1, 1)

    def run_base(self, stage: DiffusionStage, text: Conditioning, generators: list[torch.Generator],
                 settings: RenderSettings, frames: int | None, progress: bool) -> torch.Tensor:
        """The first stage (image or video): [B, 3, H, W] or [B, F, 3, H, W] in [-1, 1]."""
        size = stage.config.resolution
        if frames is None:
            noise = randn((len(generators), 3, size, size), generators, device=self.device)
            return self._sample(stage, text, noise, 0, settings, generators, progress)
        noise = stage.clip_noise(randn((len(generators), frames, 3, size, size), generators, device=self.device))
        cond = replace(text, video_mask=torch.ones(len(generators), dtype=torch.bool, device=self.device))
        return self._sample(stage, cond, noise, 0, settings, generators, progress)

    def run_clip(self, text: Conditioning, generators: list[torch.Generator], settings: RenderSettings,
                 frames: int, progress: bool, video_text: Conditioning | None = None) -> torch.Tensor:
        """The video stage's clips [B, F, 3, H, W] in [-1, 1]. A video stage conditioned on its first frame
        gets that frame from the image base first (Emu Video's factorisation: draw the scene, then move it).
        ``text`` is what the image stages read; ``video_text`` what the video stage reads (None: ``text``)."""
        if self.video is None:
            raise UserError("this cascade has no video stage")
        video_text = text if video_text is None else replace(video_text, image_embed=text.image_embed)
        if self.video.config.unet.first_frame_conditioning:
            base = self.stages[0]
            if base.config.resolution != self.video.config.resolution:
                raise UserError(f"the video stage draws {self.video.config.resolution} px frames from a first frame "
                                f"of the same size, but the base draws {base.config.resolution} px")
            first_frame = self.run_base(base, text, generators, settings, None, progress)
            video_text = replace(video_text, first_frame=first_frame.to(self.device))
        return self.run_base(self.video, video_text, generators, settings, frames, progress)

    def run_super_resolution(self, index: int, text: Conditioning, low: torch.Tensor,
                             generators: list[torch.Generator], settings: RenderSettings, progress: bool,
                             shared_noise: bool = True) -> torch.Tensor:
        """One super-resolution stage. Clips are refined frame by frame; with ``shared_noise`` every
        frame of a clip starts from the same noise (and the same augmentation noise), which keeps the
        static background from flickering (benchmarks/flicker.py measures it against fresh noise per frame)."""
        stage = self.stages[index]
        size = stage.config.resolution
        batch = len(generators)
        aug = torch.full((batch,), stage.aug_time(settings.sr_aug), dtype=torch.float64)
        if low.ndim == 5:
            frames = low.shape[1]
            draws = 1 if shared_noise else frames
            noise = randn((batch, draws, 3, size, size), generators, device=self.device).flatten(0, 1)
            aug_noise = randn((batch, draws, 3, size, size), generators, device=self.device).flatten(0, 1)
            if shared_noise:
                noise, aug_noise = noise.repeat_interleave(frames, dim=0), aug_noise.repeat_interleave(frames, dim=0)
            per_frame = Conditioning(**{k: (v.repeat_interleave(frames, dim=0) if v is not None else None)
                                        for k, v in text.__dict__.items()})
            cond = stage.augmented(replace(per_frame, low_res=low.flatten(0, 1)), aug.repeat_interleave(frames),
                                   None, noise=aug_noise)
            frame_generators = [g for g in generators for _ in range(frames)]
            out = self._sample(stage, cond, noise, index, settings, frame_generators, progress)
            return out.reshape(batch, frames, 3, size, size)
        cond = stage.augmented(replace(text, low_res=low), aug, generators)
        noise = randn((batch, 3, size, size), generators, device=self.device)
        return self._sample(stage, cond, noise, index, settings, generators, progress)


def _defaults(name: str, values: Sequence, stages: int) -> tuple:
    """A release's default values: one for all stages, or at least one per stage."""
    values = tuple(values)
    if len(values) == 1:
        return values * stages
    if len(values) < stages:
        raise UserError(f"cascade.yaml: defaults.{name} needs 1 or {stages} values, got {len(values)}")
    return values[:stages]


def _per_stage(name: str, values: Sequence, stages: int) -> tuple:
    values = tuple(values)
    if len(values) == 1:
        return values * stages
    if len(values) != stages:
        raise UserError(f"--{name} needs 1 or {stages} values (one per stage), got {len(values)}")
    return values
