"""CLIP text towers through ``open_clip``, from local weights only.

What the encoder returns (the DALL-E 2 / unCLIP convention):

- tokens: the text transformer's per-token final states after ``ln_final``, *not*
  projected, ``[B, L, width]``: what a decoder cross-attends to;
- mask: True up to and including the end-of-text token (start token included);
- pooled: open_clip's ``encode_text`` output, i.e. the end-of-text state projected by
  ``text_projection``, ``[B, embed_dim]``, *not* L2-normalised (normalise it yourself for
  cosine similarity; the norm is kept so that nothing is lost);
- words: the transformer's input, token embedding plus position embedding, ``[B, L, width]``.

The transformer always runs on the full context (the tokenizer pads every prompt to the
context length, as open_clip does), so the results are exactly open_clip's own, and a
prompt's embedding never depends on its batch. ``L`` is then cut to the batch's longest
prompt.

Supported: every architecture whose text tower is open_clip's own transformer with its
CLIP BPE tokenizer (``CLIP`` and ``CustomTextCLIP`` models: ViT-*, RN*, convnext_*, EVA*,
...). Refused with a clear error: towers or tokenizers from the Hugging Face hub
(``hf_model_name`` / ``hf_tokenizer_name``: SigLIP, XLM-R, ...; they cannot load offline)
and CoCa, whose per-token states never pass through ``ln_final``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cascade.errors import UserError
from cascade.text.base import ModelTextEncoder, TextEmbedding

#: Weight files looked for in a ``local-dir:`` folder, preferred first (as open_clip does).
PREFERRED_WEIGHTS: tuple[str, ...] = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.pth",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class OpenClipTextEncoder(ModelTextEncoder):
    """The text tower of an open_clip model (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, max_length: int | None = None) -> None:
        tower = _text_tower(model)
        self._ln_final: nn.Module = tower.ln_final
        self._token_embedding: nn.Module = tower.token_embedding
        self._positional_embedding: Tensor | None = getattr(tower, "positional_embedding", None)  # [ctx, width]
        self.context_length = int(tower.context_length)
        max_length = self.context_length if max_length is None else max_length
        if not 2 <= max_length <= self.context_length:
            raise UserError(f"max_length {max_length} must be between 2 and the CLIP context length {self.context_length}")
        width = int(tower.ln_final.normalized_shape[0])
        projection = tower.text_projection
        if projection is None:
            pooled_width = width
        elif isinstance(projection, nn.Linear):
            pooled_width = int(projection.out_features)
        else:
            pooled_width = int(projection.shape[1])
        super().__init__(model, tokenizer, name=name, max_length=max_length, dim=width, pooled_dim=pooled_width,
                         word_dim=width)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        tok = self.tokenizer
        self._truncation.report(prompts, [len(tok.encode(p)) + 2 for p in prompts], self._max_length)
        ids = tok(prompts, context_length=self._max_length)  # [B, max_length], EOT kept on truncation
        if self._max_length < self.context_length:  # pad with open_clip's pad id 0 to the full context
            ids = nn.functional.pad(ids, (0, self.context_length - self._max_length))  # [B, ctx]
        ids = ids.to(self.device)
        lengths = (ids == tok.eot_token_id).int().argmax(dim=1) + 1  # [B], through the first EOT
        captured: list[Tensor] = []
        hook = self._ln_final.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            pooled = self.model.encode_text(ids, normalize=False)  # [B, embed_dim]
        finally:
            hook.remove()
        states = captured[-1]  # [B, ctx, width], after ln_final, unprojected
        longest = int(lengths.max())
        positions = torch.arange(longest, device=ids.device)  # [L]
        mask = positions[None, :] < lengths[:, None]  # [B, L]
        words = self._token_embedding(ids[:, :longest])  # [B, L, width]
        if self._positional_embedding is not None:
            words = words + self._positional_embedding[:longest].to(words.dtype)
        return TextEmbedding(tokens=states[:, :longest], mask=mask, pooled=pooled, words=words)


def _text_tower(model: nn.Module) -> Any:
    """The module holding ``ln_final``, ``context_length`` and ``text_projection``."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None:
            raise UserError("open_clip model is CoCa-style (a text CLS token): it exposes no per-token final states")
        return text
    if text is None and hasattr(model, "ln_final") and hasattr(model, "context_length"):
        return model
    raise UserError(f"open_clip model {type(model).__name__} has no open_clip text transformer (an HF text tower?)")


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Hide open_clip's 'No pretrained weights loaded' log line: we load the weights next."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _find_weights(folder: Path) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not found:
        raise UserError(f"no weights file ({', '.join(_WEIGHT_SUFFIXES)}) in {folder}")
    for preferred in PREFERRED_WEIGHTS:
        if folder / preferred in found:
            return folder / preferred
    if len(found) > 1:
        raise UserError(f"several weights files in {folder} ({', '.join(p.name for p in found)}): keep one")
    return found[0]


def _read_state_dict(model: nn.Module, weights: Path) -> dict[str, Tensor]:
    """Read a checkpoint with no pickle code execution and apply open_clip's format conversions."""
    from open_clip.convert import convert_state_dict
    from open_clip.factory import load_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    try:
        state = load_state_dict(str(weights), device="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's problem
        raise UserError(f"could not read weights {weights}: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{weights} is not a state dict of tensors")
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    own = model.state_dict()
    for key in ("logit_scale", "logit_bias"):  # scalar vs [1]: the same number
        if key in state and key in own and state[key].numel() == own[key].numel():
            state[key] = state[key].reshape(own[key].shape)
    return state


def _load_strict(model: nn.Module, weights: Path, what: str) -> None:
    """Load weights, refusing any difference from the architecture (no silent resizing)."""
    state = _read_state_dict(model, weights)
    own = model.state_dict()
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    problems = []
    if wrong:
        key, got, want = wrong[0]
        problems.append(f"{len(wrong)} weights have other shapes (e.g. {key}: checkpoint {got}, architecture {want})")
    if missing:
        problems.append(f"{len(missing)} weights are missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} weights are not in the architecture (e.g. {extra[0]})")
    if problems:
        raise UserError(f"weights {weights} do not match {what}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _model_config(path: Path, arch: str | None) -> tuple[str, dict[str, Any], Path]:
    """(open_clip model name, its model_cfg, the weights file) for a spec's path and arch."""
    import open_clip

    if arch is None:
        if not path.is_dir():
            raise UserError(f"clip:local-dir: wants a folder, got the file {path}")
        config_file = path / "open_clip_config.json"
        if not config_file.is_file():
            raise UserError(f"no open_clip_config.json in {path}")
        try:
            model_cfg = json.loads(config_file.read_text(encoding="utf-8"))["model_cfg"]
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise UserError(f"{config_file} is not an open_clip config with a 'model_cfg' ({error})") from None
        return f"local-dir:{path}", model_cfg, _find_weights(path)
    if arch not in open_clip.list_models():
        raise UserError(
            f"unknown open_clip architecture {arch!r} (see open_clip.list_models(), e.g. ViT-B-32, ViT-L-14, RN50)"
        )
    if not path.is_file() or path.suffix not in _WEIGHT_SUFFIXES:
        raise UserError(f"clip:{arch}: wants a weights file ({', '.join(_WEIGHT_SUFFIXES)}), got {path}")
    return arch, open_clip.get_model_config(arch), path


def load_local_dir_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The whole open_clip model of a ``local-dir:`` folder (float32, on the CPU, weights loaded
    strictly) and its ``model_cfg``.

    :raises UserError: on a missing folder, config or weights file, or weights that do not match.
    """
    import open_clip

    model_name, model_cfg, weights = _model_config(path, None)
    with _no_random_init_warning():
        model = open_clip.create_model(model_name, load_weights=False, pretrained_image=False,
                                       pretrained_text=False, device="cpu")
    _load_strict(model, weights, f"the config in {path}")
    return model, model_cfg


def load_open_clip_encoder(
    path: Path,
    *,
    arch: str | None,
    dtype: torch.dtype,
    max_length: int | None,
    device: torch.device,
    name: str,
) -> OpenClipTextEncoder:
    """Load ``clip:local-dir:PATH`` (``arch`` None) or ``clip:ARCH:PATH``; keeps only the text tower.

    :raises UserError: on a missing file, weights that do not match the architecture, or an
        architecture that needs the hub (see the module docstring).
    """
    import open_clip

    model_name, model_cfg, weights = _model_config(path, arch)
    text_cfg = model_cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key):
            raise UserError(
                f"open_clip model {model_name!r} uses the Hugging Face text model or tokenizer "
                f"{text_cfg[key]!r}, which would come from the hub: not supported offline"
            )
    if "multimodal_cfg" in model_cfg:
        raise UserError(f"open_clip model {model_name!r} is CoCa-style: it exposes no per-token final text states")
    try:
        with _no_random_init_warning():
            model = open_clip.create_model(
                model_name, load_weights=False, pretrained_image=False, pretrained_text=False, device="cpu"
            )
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"could not build open_clip model {model_name!r}: {str(error).splitlines()[0]}") from None
    _load_strict(model, weights, f"the architecture {model_name!r}")
    model.visual = None  # the image tower is never used: free its memory
    model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = open_clip.get_tokenizer(model_name)
    if not isinstance(tokenizer, SimpleTokenizer):
        raise UserError(
            f"open_clip model {model_name!r} uses {type(tokenizer).__name__}; only the CLIP BPE tokenizer is supported"
        )
    return OpenClipTextEncoder(model, tokenizer, name=name, max_length=max_length)
