"""An in-memory LRU cache of prompt embeddings around any :class:`TextEncoder`.

Because a prompt's embedding does not depend on its batch (zero padding, right-padded
masks), the cache stores each prompt's ``(tokens [L_i, D], pooled [D_pooled], words [L_i, D_words]
or None)`` and re-batches them: a batch assembled from the cache equals the batch the wrapped
encoder would return. Keys are the prompts exactly as given (no normalisation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from cascade.text.base import TextEmbedding, TextEncoder
from cascade.text.prompts import validate_prompts


class CachedTextEncoder(TextEncoder):
    """Wrap ``encoder``; keep the embeddings of the ``max_items`` most recently used prompts.

    Only prompts missing from the cache are sent to the wrapped encoder, once per batch
    even when repeated. ``misses`` counts the prompts sent to the wrapped encoder, ``hits``
    all the others.
    """

    def __init__(self, encoder: TextEncoder, max_items: int = 4096) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        super().__init__(encoder.name)
        self.encoder = encoder
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, tuple[Tensor, Tensor, Tensor | None]] = OrderedDict()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def pooled_dim(self) -> int:
        return self.encoder.pooled_dim

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def word_dim(self) -> int | None:
        return self.encoder.word_dim

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def truncated_count(self) -> int:
        return self.encoder.truncated_count

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Forget every cached prompt (the counters stay)."""
        self._items.clear()

    def encode(self, prompts: Sequence[str | bytes]) -> TextEmbedding:
        """Like :meth:`TextEncoder.encode`; cached prompts do not run the model."""
        texts = validate_prompts(prompts)
        found: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        for text in texts:
            if text in found:
                continue
            item = self._items.get(text)
            if item is not None:
                found[text] = item
                self._items.move_to_end(text)
        new = list(dict.fromkeys(t for t in texts if t not in found))
        self.misses += len(new)
        self.hits += len(texts) - len(new)
        if new:
            embedding = self.encoder.encode(new)
            for text, (tokens, pooled), words in zip(new, embedding.unbatch(), embedding.unbatch_words()):
                # [L_i, D], [D_pooled], [L_i, D_words] or None
                found[text] = (tokens.clone(), pooled.clone(), None if words is None else words.clone())
                self._items[text] = found[text]
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return TextEmbedding.from_sequences([found[t][0] for t in texts], [found[t][1] for t in texts],
                                            [found[t][2] for t in texts])

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        return self.encoder._encode(prompts)
