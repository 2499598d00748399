"""The configuration of a whole cascade release: which stages, in what order, and their defaults.

A cascade release is a folder holding ``cascade.yaml`` and one sub-folder per stage release
(see :mod:`cascade.release`); paths in ``cascade.yaml`` are relative to that folder::

    text_encoder: clip:local-dir:clip
    base: base64
    super_resolution: [sr256, sr1024]
    video: video64
    video_text_encoder: clip:local-dir:clip-words   # optional: the video stage's own text encoder
    defaults: {sampler: dpmpp-2m, steps: [25, 15, 10], guidance: [3.0, 1.5, 1.0], sr_aug: 0.1}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cascade.config import load_yaml
from cascade.errors import UserError


@dataclass(frozen=True)
class RenderDefaults:
    """Per-stage sampling defaults, in cascade order (base, then each super-resolution stage)."""

    sampler: str = "dpmpp-2m"
    steps: tuple[int, ...] = (25, 15, 10)
    guidance: tuple[float, ...] = (3.0, 1.5, 1.0)
    sr_aug: float = 0.1
    threshold: str | None = "dynamic"
    frames: int = 8
    fps: int = 8
    prior_steps: int = 16
    prior_guidance: float = 2.0


@dataclass(frozen=True)
class CascadeConfig:
    """``text_encoder``: a spec whose local paths are relative to the release folder.
    ``prior``: the unCLIP prior's folder, or None for the Imagen path (text only).
    ``base``, ``super_resolution``: stage folders; ``video``: the temporal base stage's folder.
    ``video_text_encoder``: the video stage's own text encoder, or None for ``text_encoder``. A video
    stage trained on a CLIP taught the motion words (:mod:`cascade.training.clip_words`) reads the
    prompt through it, while the image stages, the first frame's included, keep reading the encoder
    they were trained on (the taught words change how every caption holding them encodes)."""

    text_encoder: str
    base: str
    super_resolution: tuple[str, ...] = ()
    prior: str | None = None
    video: str | None = None
    video_text_encoder: str | None = None
    text_max_length: int | None = None
    defaults: RenderDefaults = field(default_factory=RenderDefaults)


def load_cascade_config(folder: Path) -> CascadeConfig:
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"checkpoint folder {str(folder)!r} does not exist")
    path = folder / "cascade.yaml"
    if not path.is_file():
        raise UserError(f"{str(folder)!r} is not a cascade release (no cascade.yaml)")
    return load_yaml(CascadeConfig, path)


def resolve_encoder_spec(spec: str, folder: Path) -> str:
    """The spec with its local path made absolute against the release folder."""
    kind, _, rest = spec.partition(":")
    if kind == "clip" and rest.startswith("local-dir:"):
        return f"clip:local-dir:{(folder / rest[len('local-dir:'):]).resolve()}"
    if kind in ("t5", "hf"):
        return f"{kind}:{(folder / rest).resolve()}"
    if kind == "clip":
        arch, _, weights = rest.partition(":")
        return f"clip:{arch}:{(folder / weights).resolve()}"
    return spec
