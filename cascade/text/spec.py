"""Encoder specs: one string names a text encoder and the local files it loads from.

=========================================  ================================================
Spec                                       Encoder
=========================================  ================================================
``t5:/path/to/folder``                     ``T5EncoderModel`` (or mT5 / UMT5) + its tokenizer,
                                           a ``save_pretrained`` folder
``hf:/path/to/folder``                     any ``transformers`` encoder (``AutoModel``), e.g.
                                           a sentence encoder; pooled = masked mean
``clip:local-dir:/path/to/folder``         open_clip model: ``open_clip_config.json`` + one
                                           weights file in the folder
``clip:ARCH:/path/to/weights.safetensors`` open_clip built-in architecture ``ARCH`` (e.g.
                                           ``ViT-B-32``) with weights from a local
                                           ``.safetensors``/``.bin``/``.pt``/``.pth`` file
=========================================  ================================================

Paths may be relative and may start with ``~``; they may contain colons (only the first
one, or two for ``clip:ARCH:``, separate fields). Nothing is ever fetched from a hub: a
missing path is a :class:`~cascade.errors.UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cascade.device import checked_device
from cascade.errors import UserError, choice_error
from cascade.text.base import TextEncoder

EncoderKind = Literal["t5", "hf", "clip"]
ENCODER_KINDS: tuple[str, ...] = ("t5", "hf", "clip")
CLIP_WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth")
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_LOCAL_DIR = "local-dir:"
_USAGE = "t5:DIR, hf:DIR, clip:local-dir:DIR or clip:ARCH:WEIGHTS_FILE"


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed spec. ``arch`` is None except for ``clip:ARCH:FILE``."""

    kind: EncoderKind
    path: Path
    arch: str | None = None

    def __str__(self) -> str:
        if self.kind == "clip":
            return f"clip:{self.arch}:{self.path}" if self.arch else f"clip:{_LOCAL_DIR}{self.path}"
        return f"{self.kind}:{self.path}"


def parse_spec(spec: str) -> EncoderSpec:
    """Parse a spec string (see the module docstring); checks the syntax, not the files.

    >>> parse_spec("clip:ViT-B-32:/w/model.safetensors")
    EncoderSpec(kind='clip', path=PosixPath('/w/model.safetensors'), arch='ViT-B-32')
    """
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise UserError(f"text encoder spec {spec!r} has no kind (use {_USAGE})")
    if kind not in ENCODER_KINDS:
        raise choice_error("text encoder kind", kind, ENCODER_KINDS)
    arch: str | None = None
    if kind == "clip":
        if rest.startswith(_LOCAL_DIR):
            rest = rest[len(_LOCAL_DIR) :]
        else:
            arch, sep, rest = rest.partition(":")
            if not sep or not arch:
                raise UserError(f"clip spec {spec!r} needs clip:local-dir:DIR or clip:ARCH:WEIGHTS_FILE")
    if not rest:
        raise UserError(f"text encoder spec {spec!r} has no path (use {_USAGE})")
    return EncoderSpec(kind=kind, path=Path(rest).expanduser(), arch=arch)  # type: ignore[arg-type]


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or the long names, or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise choice_error("text encoder dtype", str(dtype), sorted(DTYPES))
        return dtype
    if dtype not in DTYPES:
        raise choice_error("text encoder dtype", dtype, sorted(DTYPES))
    return DTYPES[dtype]


def load_text_encoder(
    spec: str | EncoderSpec,
    *,
    dtype: str | torch.dtype = "fp32",
    max_length: int | None = None,
    device: str | torch.device = "cpu",
    cache_size: int = 0,
) -> TextEncoder:
    """Build the text encoder a spec names, from local files only.

    :param spec: see the module docstring.
    :param dtype: the parameters' dtype (``fp32``, ``bf16``, ``fp16``); outputs are float32.
        On a CPU without AMX-FP16, fp16 is slow: prefer bf16.
    :param max_length: the most tokens a prompt keeps (special tokens included); longer
        prompts are truncated with a warning. Default: the encoder's own limit (a CLIP
        context length, a tokenizer's ``model_max_length``, else 512). For CLIP it may not
        exceed the context length.
    :param device: where the model runs and where embeddings are returned.
    :param cache_size: when > 0, wrap the encoder in an LRU cache of that many prompts.
    :raises UserError: on a bad spec, a missing path or file, a checkpoint that does not
        match its architecture, or an architecture that cannot run offline.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    torch_dtype = parse_dtype(dtype)
    dev = checked_device(device)
    if max_length is not None and max_length < 2:
        raise UserError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
    if not parsed.path.exists():
        what = "weights file" if parsed.arch else "folder"
        raise UserError(f"text encoder {what} not found: {parsed.path} (from spec {str(parsed)!r})")
    encoder: TextEncoder
    if parsed.kind == "clip":
        from cascade.text.open_clip_encoder import load_open_clip_encoder

        encoder = load_open_clip_encoder(
            parsed.path, arch=parsed.arch, dtype=torch_dtype, max_length=max_length, device=dev, name=str(parsed)
        )
    else:
        from cascade.text.hf_encoder import load_hf_encoder

        encoder = load_hf_encoder(
            parsed.path,
            t5_only=parsed.kind == "t5",
            dtype=torch_dtype,
            max_length=max_length,
            device=dev,
            name=str(parsed),
        )
    if cache_size > 0:
        from cascade.text.cache import CachedTextEncoder

        encoder = CachedTextEncoder(encoder, max_items=cache_size)
    return encoder
