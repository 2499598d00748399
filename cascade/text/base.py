"""The one interface every text encoder implements: prompts -> :class:`TextEmbedding`.

Contract of :meth:`TextEncoder.encode` (all encoders, cached or not):

- ``tokens``: float32 ``[B, L, D]``, the encoder's per-token final hidden states, where
  ``L`` is the longest prompt of the batch in tokens (special tokens included), not the
  encoder's maximum length. Positions past a prompt's end are exactly zero.
- ``mask``: bool ``[B, L]``, True on a prompt's real tokens. Padding is on the right, so
  each row is a run of True followed by a run of False (at least one True).
- ``pooled``: float32 ``[B, D_pooled]``, one vector per prompt (what it is depends on
  the encoder: see each encoder's docstring).
- ``words``: float32 ``[B, L, D_words]`` or None, each token's input embedding (open_clip adds
  its position embedding, as its transformer's input does; T5 has none): what each word is before
  the transformer mixes the prompt. A small encoder trained contrastively can fold words
  together in its final states (the world CLIP: "cube" and "sphere" differ by a third of a state's
  norm there, by more than its whole norm here); a stage that reads these sees every word apart.
  Zero at padding, like ``tokens``.

A prompt's embedding does not depend on the other prompts of its batch (up to float
rounding), so embeddings can be cached per prompt and precomputed per sample. The
tensors come from ``torch.inference_mode`` but are returned as ordinary tensors, so they
can feed a network that is being trained.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cascade.errors import UserError
from cascade.text.prompts import TruncationNotice, validate_prompts


@dataclass(frozen=True, eq=False)
class TextEmbedding:
    """Embeddings of a batch of B prompts.

    :param tokens: float ``[B, L, D]`` per-token states; zero where ``mask`` is False.
    :param mask: bool ``[B, L]``, True on real tokens; each row is True then False.
    :param pooled: float ``[B, D_pooled]``, one vector per prompt.
    :param words: float ``[B, L, D_words]`` or None: the encoder's first-layer input per token.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor
    words: Tensor | None = None

    def __post_init__(self) -> None:
        t, m, p = self.tokens, self.mask, self.pooled
        if t.ndim != 3 or m.ndim != 2 or p.ndim != 2:
            raise ValueError(
                f"TextEmbedding wants tokens [B, L, D], mask [B, L], pooled [B, D]; got "
                f"{tuple(t.shape)}, {tuple(m.shape)}, {tuple(p.shape)}"
            )
        if m.dtype != torch.bool:
            raise ValueError(f"TextEmbedding mask must be bool, got {m.dtype}")
        if tuple(m.shape) != tuple(t.shape[:2]) or p.shape[0] != t.shape[0]:
            raise ValueError(
                f"TextEmbedding shapes disagree: tokens {tuple(t.shape)}, mask {tuple(m.shape)}, "
                f"pooled {tuple(p.shape)}"
            )
        if self.words is not None and (self.words.ndim != 3 or tuple(self.words.shape[:2]) != tuple(t.shape[:2])):
            raise ValueError(f"TextEmbedding words {tuple(self.words.shape)} do not match tokens {tuple(t.shape)}")
        lengths = m.sum(dim=1)  # [B]
        prefix = torch.arange(m.shape[1], device=m.device)[None, :] < lengths[:, None]  # [B, L]
        if not torch.equal(prefix, m) or bool((lengths == 0).any()):
            raise ValueError("TextEmbedding mask rows must be True on a non-empty prefix, then False")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Tensor:
        """int64 ``[B]``: each prompt's true length in tokens."""
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TextEmbedding":
        """Move ``tokens``, ``pooled`` and ``words`` to ``device`` / ``dtype``; the mask stays bool."""
        return TextEmbedding(
            tokens=self.tokens.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
            words=None if self.words is None else self.words.to(device=device, dtype=dtype),
        )

    def unbatch(self) -> list[tuple[Tensor, Tensor]]:
        """Split into per-prompt ``(tokens [L_i, D], pooled [D_pooled])``, cut to the true lengths."""
        return [(self.tokens[i, :n], self.pooled[i]) for i, n in enumerate(self.lengths.tolist())]

    def unbatch_words(self) -> list[Tensor | None]:
        """Per prompt, ``words [L_i, D_words]`` cut to its true length (None for each if there are none)."""
        if self.words is None:
            return [None] * len(self)
        return [self.words[i, :n] for i, n in enumerate(self.lengths.tolist())]

    @staticmethod
    def from_sequences(tokens: Sequence[Tensor], pooled: Sequence[Tensor] | Tensor,
                       words: Sequence[Tensor | None] | None = None) -> "TextEmbedding":
        """Batch per-prompt embeddings, padding on the right with zeros.

        :param tokens: B tensors ``[L_i, D]`` with ``L_i >= 1``.
        :param pooled: B tensors ``[D_pooled]`` or one tensor ``[B, D_pooled]``.
        :param words: None, or B tensors ``[L_i, D_words]`` (all None: no words).
        """
        if len(tokens) == 0:
            raise ValueError("from_sequences needs at least one sequence")
        out, mask = _pad_right(tokens)  # [B, L, D], [B, L]
        pooled_batch = pooled if isinstance(pooled, Tensor) else torch.stack(list(pooled))  # [B, D_pooled]
        if words is None or all(w is None for w in words):
            return TextEmbedding(tokens=out, mask=mask, pooled=pooled_batch)
        if any(w is None for w in words):
            raise ValueError("from_sequences: words for some prompts but not for others")
        return TextEmbedding(tokens=out, mask=mask, pooled=pooled_batch, words=_pad_right(words)[0])


def _pad_right(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """B tensors ``[L_i, D]`` -> (zero-padded ``[B, max L_i, D]``, bool mask ``[B, max L_i]``)."""
    lengths = [t.shape[0] for t in sequences]
    first = sequences[0]
    out = first.new_zeros((len(sequences), max(lengths), first.shape[-1]))
    mask = torch.zeros(out.shape[:2], dtype=torch.bool, device=first.device)
    for i, (t, n) in enumerate(zip(sequences, lengths)):
        out[i, :n] = t
        mask[i, :n] = True
    return out, mask


class TextEncoder(ABC):
    """A frozen text encoder: ``encode(prompts) -> TextEmbedding`` (see the module docstring).

    Subclasses implement :meth:`_encode`; :meth:`encode` validates the prompts
    (:func:`~cascade.text.prompts.validate_prompts`), runs ``_encode`` under
    ``torch.inference_mode`` and returns float32 ordinary tensors with zero padding.
    """

    def __init__(self, name: str) -> None:
        #: A description of the encoder, normally its spec (stored with precomputed embeddings).
        self.name = name
        self._truncation = TruncationNotice(name)

    @property
    @abstractmethod
    def dim(self) -> int:
        """D, the width of the per-token states."""

    @property
    @abstractmethod
    def pooled_dim(self) -> int:
        """D_pooled, the width of the pooled vector."""

    @property
    @abstractmethod
    def max_length(self) -> int:
        """The most tokens (special tokens included) a prompt keeps; longer prompts are cut."""

    @property
    def word_dim(self) -> int | None:
        """D_words, the width of ``words``, or None when this encoder gives none."""
        return None

    @property
    def device(self) -> torch.device:
        """Where the model runs and where the returned tensors are."""
        return torch.device("cpu")

    @property
    def truncated_count(self) -> int:
        """How many prompts this encoder has cut to :attr:`max_length` so far."""
        return self._truncation.count

    def encode(self, prompts: Sequence[str | bytes]) -> TextEmbedding:
        """Embed a batch of prompts.

        :param prompts: B >= 1 non-empty prompts (``str``, or UTF-8 ``bytes``).
        :returns: float32 tokens ``[B, L, D]``, bool mask ``[B, L]``, float32 pooled ``[B, D_pooled]``.
        :raises UserError: on an empty prompt or one that is not valid UTF-8.
        """
        texts = validate_prompts(prompts)
        with torch.inference_mode():
            raw = self._encode(texts)
        # Outside inference mode: these ops give ordinary tensors that autograd accepts.
        mask = raw.mask.clone()  # [B, L]
        tokens = torch.where(mask[..., None], raw.tokens.float(), 0.0)  # [B, L, D], zero padding
        pooled = raw.pooled.float().clone()  # [B, D_pooled]
        words = None if raw.words is None else torch.where(mask[..., None], raw.words.float(), 0.0)  # [B, L, D_words]
        if not (bool(torch.isfinite(tokens).all()) and bool(torch.isfinite(pooled).all())):
            raise UserError(
                f"text encoder {self.name} produced inf or nan (an overflow in {self._param_dtype()}?): "
                "load it in bf16 or fp32"
            )
        return TextEmbedding(tokens=tokens, mask=mask, pooled=pooled, words=words)

    def _param_dtype(self) -> str:
        dtype = getattr(self, "dtype", None)
        return str(dtype).removeprefix("torch.") if dtype is not None else "its dtype"

    @abstractmethod
    def _encode(self, prompts: list[str]) -> TextEmbedding:
        """Run the model on validated prompts (called under ``torch.inference_mode``).

        May return any float dtype and any values at padded positions.
        """

    def __repr__(self) -> str:
        sizes = f"dim={self.dim}, pooled_dim={self.pooled_dim}, max_length={self.max_length}"
        return f"{type(self).__name__}({self.name!r}, {sizes})"


class ModelTextEncoder(TextEncoder):
    """A text encoder around one torch model and its tokenizer, with fixed widths and length."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_length: int, dim: int, pooled_dim: int,
                 word_dim: int | None = None) -> None:
        super().__init__(name)
        self.model = model
        self.tokenizer = tokenizer
        self._max_length = max_length
        self._dim = dim
        self._pooled_dim = pooled_dim
        self._word_dim = word_dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def pooled_dim(self) -> int:
        return self._pooled_dim

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def word_dim(self) -> int | None:
        return self._word_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype
