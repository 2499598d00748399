"""T5 and other ``transformers`` encoders, loaded from a local ``save_pretrained`` folder.

- tokens: the encoder's ``last_hidden_state`` (after T5's final layer norm), ``[B, L, D]``;
- mask: the tokenizer's attention mask (the prompt's tokens plus its special tokens,
  e.g. T5's closing ``</s>``, or BERT's ``[CLS]`` and ``[SEP]``);
- pooled: the masked mean of the tokens, ``[B, D]`` (not normalised). T5 has no pooled
  output, and a model's own pooler (BERT's ``tanh(W h_CLS)``) is never used;
- words: the input token embeddings (``get_input_embeddings()``; T5 adds no position embedding, so
  they are exactly what its first layer reads), ``[B, L, D]``.

In fp16, ``transformers`` keeps T5's feed-forward output projections (``wo``) in fp32,
because they overflow in fp16; bf16 casts every parameter.

Loading never touches the network (``local_files_only=True``) and refuses a checkpoint
that does not match its ``config.json`` (wrong shapes, missing weights, or extra layers),
which ``transformers`` would otherwise re-initialise or drop with only a log message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade.errors import UserError
from cascade.text.base import ModelTextEncoder, TextEmbedding

#: T5-family ``model_type`` -> the ``transformers`` class that holds only the encoder.
T5_ENCODER_CLASSES: dict[str, str] = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
#: Fallback maximum length when neither the tokenizer nor the config states one.
DEFAULT_MAX_LENGTH = 512
#: Missing weights we never use, so their absence is harmless.
_UNUSED_MISSING = ("pooler.",)
_HUGE = 1_000_000
_INDEX = re.compile(r"\.\d+\.")


class HFTextEncoder(ModelTextEncoder):
    """A frozen ``transformers`` encoder and its tokenizer (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_length: int) -> None:
        width = int(model.config.hidden_size)
        super().__init__(model, tokenizer, name=name, max_length=max_length, dim=width, pooled_dim=width, word_dim=width)

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        full = self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        self._truncation.report(prompts, [len(ids) for ids in full], self._max_length)
        batch = self.tokenizer(
            prompts, padding="longest", truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        ids = batch["input_ids"].to(self.device)  # [B, L]
        mask = batch["attention_mask"].to(self.device).bool()  # [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        pooled = masked_mean(hidden.float(), mask)  # [B, D]
        words = self.model.get_input_embeddings()(ids)  # [B, L, D]: a lookup, not every layer's states kept
        return TextEmbedding(tokens=hidden, mask=mask, pooled=pooled, words=words)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' 'Loading weights' progress bar while loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_loading_info(info: dict[str, Any], model: Any, path: Path) -> None:
    """Raise if the checkpoint does not fit the architecture its config describes.

    Unexpected keys are tolerated only outside the model's own module lists: a full T5
    checkpoint's ``decoder.*`` is fine for the encoder, an ``encoder.block.7.*`` that the
    config has no room for is not.
    """
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda item: str(item[0]))
    if mismatched:
        key, ckpt_shape, model_shape = mismatched[0]
        raise UserError(
            f"checkpoint in {path} does not match its config.json: {len(mismatched)} weights have other shapes "
            f"(e.g. {key}: checkpoint {tuple(ckpt_shape)}, config {tuple(model_shape)})"
        )
    missing = sorted(k for k in info.get("missing_keys") or [] if not k.startswith(_UNUSED_MISSING))
    if missing:
        raise UserError(
            f"checkpoint in {path} does not match its config.json: {len(missing)} weights are missing "
            f"(e.g. {missing[0]})"
        )
    stems = {_INDEX.split(k)[0] for k in model.state_dict() if _INDEX.search(k)}
    extra = sorted(k for k in info.get("unexpected_keys") or [] if _INDEX.search(k) and _INDEX.split(k)[0] in stems)
    if extra:
        raise UserError(
            f"checkpoint in {path} does not match its config.json: it has {len(extra)} weights for layers the "
            f"config does not have (e.g. {extra[0]})"
        )


def _resolve_max_length(max_length: int | None, tokenizer: Any, config: Any, path: Path) -> int:
    limit = getattr(config, "max_position_embeddings", None)  # absolute positions only; T5 has none
    if max_length is not None:
        if limit is not None and max_length > limit:
            raise UserError(f"max_length {max_length} is more than the {limit} positions of the model in {path}")
        return max_length
    from_tokenizer = getattr(tokenizer, "model_max_length", None)
    if isinstance(from_tokenizer, int) and 2 <= from_tokenizer < _HUGE:
        return min(from_tokenizer, limit) if limit else from_tokenizer
    return limit or DEFAULT_MAX_LENGTH


def _load_tokenizer(path: Path, vocab_rows: int) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"could not load a tokenizer from {path}: {str(error).splitlines()[0]}") from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer in {path} has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > vocab_rows:
        raise UserError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model embeds only {vocab_rows}: "
            "tokenizer and checkpoint do not belong together"
        )
    ids = tokenizer("a photo of a cat on a table", add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise UserError(f"the tokenizer in {path} maps ordinary text to <unk> only: its vocabulary did not load")
    return tokenizer


def load_hf_encoder(
    path: Path,
    *,
    t5_only: bool,
    dtype: torch.dtype,
    max_length: int | None,
    device: torch.device,
    name: str,
) -> HFTextEncoder:
    """Load a ``save_pretrained`` folder (``config.json``, weights, tokenizer files).

    :param t5_only: the ``t5:`` spec: refuse a folder that does not hold a T5-family model.
    :raises UserError: see the module docstring.
    """
    import transformers

    if not path.is_dir():
        raise UserError(f"text encoder folder not found: {path} (it is not a directory)")
    if not (path / "config.json").is_file():
        raise UserError(f"no config.json in {path}: not a transformers save_pretrained folder")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"could not read {path / 'config.json'}: {str(error).splitlines()[0]}") from None
    model_type = getattr(config, "model_type", "")
    if model_type in T5_ENCODER_CLASSES:
        model_class = getattr(transformers, T5_ENCODER_CLASSES[model_type])
    elif t5_only:
        raise UserError(
            f"{path} holds a {model_type!r} model, not T5 ({', '.join(T5_ENCODER_CLASSES)}): use hf:{path}"
        )
    else:
        model_class = transformers.AutoModel
    try:
        with _quiet_progress():
            model, info = model_class.from_pretrained(
                str(path),
                local_files_only=True,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"could not load the model in {path}: {str(error).splitlines()[0]}") from None
    _check_loading_info(info, model, path)
    vocab_rows = model.get_input_embeddings().num_embeddings
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    model.eval().requires_grad_(False).to(device)
    tokenizer = _load_tokenizer(path, vocab_rows)
    length = _resolve_max_length(max_length, tokenizer, model.config, path)
    return HFTextEncoder(model, tokenizer, name=name, max_length=length)


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: tokens ``[B, L, D]``, bool mask ``[B, L]`` -> ``[B, D]``."""
    weights = mask[..., None].to(tokens.dtype)  # [B, L, 1]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
