"""The LRU prompt cache: same tensors as the wrapped encoder, without running its model again."""

from __future__ import annotations

import os
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cascade.text import CachedTextEncoder, TextEmbedding, TextEncoder, load_text_encoder  # noqa: E402
from cascade.text.testing import TINY_CAPTIONS, build_tiny_t5  # noqa: E402


class CountingEncoder(TextEncoder):
    """Token i of a prompt is [ord(c) for the first 3 characters of word i] + [i]; pooled = their sum."""

    def __init__(self) -> None:
        super().__init__("counting")
        self.seen: list[str] = []

    dim = 4  # type: ignore[assignment]
    pooled_dim = 4  # type: ignore[assignment]
    max_length = 64  # type: ignore[assignment]

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        self.seen.extend(prompts)
        seqs = [
            torch.tensor([[float(ord(c)) for c in (w + "   ")[:3]] + [float(i)] for i, w in enumerate(p.split())])
            for p in prompts
        ]
        emb = TextEmbedding.from_sequences(seqs, [s.sum(0) for s in seqs])
        return TextEmbedding(tokens=emb.tokens + 7.0, mask=emb.mask, pooled=emb.pooled)  # padding garbage


def test_cached_batches_equal_the_wrapped_encoders() -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner, max_items=10)
    prompts = ["a red cat", "one", "a red cat", "two blue spheres at sea"]
    first = cached.encode(prompts)
    assert inner.seen == ["a red cat", "one", "two blue spheres at sea"]  # a repeat runs once
    direct = inner.encode(prompts)
    for field in ("tokens", "mask", "pooled"):
        assert torch.equal(getattr(first, field), getattr(direct, field))
    inner.seen.clear()
    again = cached.encode(["one", "two blue spheres at sea"])
    assert inner.seen == []
    assert torch.equal(again.tokens[0, :1], direct.tokens[1, :1]) and torch.equal(again.pooled, direct.pooled[[1, 3]])
    assert (cached.hits, cached.misses) == (3, 3)


class WordsEncoder(CountingEncoder):
    """The counting encoder, with words: each token's state times 10."""

    word_dim = 4  # type: ignore[assignment]

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        emb = super()._encode(prompts)
        return TextEmbedding(tokens=emb.tokens, mask=emb.mask, pooled=emb.pooled, words=emb.tokens * 10.0)


def test_cached_words_equal_the_wrapped_encoders() -> None:
    inner = WordsEncoder()
    cached = CachedTextEncoder(inner, max_items=10)
    cached.encode(["a red cat", "two blue spheres at sea"])
    got = cached.encode(["two blue spheres at sea", "one", "a red cat"])  # two from the cache, one new
    want = inner.encode(["two blue spheres at sea", "one", "a red cat"])
    assert cached.word_dim == 4 and got.words is not None
    assert torch.equal(got.words, want.words) and torch.equal(got.tokens, want.tokens)
    assert torch.all(got.words[~got.mask] == 0)
    assert CachedTextEncoder(CountingEncoder()).encode(["one"]).words is None


def test_least_recently_used_prompts_are_evicted() -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner, max_items=2)
    cached.encode(["a", "b"])
    cached.encode(["a"])  # a is now the most recent
    cached.encode(["c"])  # evicts b
    inner.seen.clear()
    cached.encode(["a", "c", "b"])
    assert inner.seen == ["b"] and len(cached) == 2


def test_cache_size_option_wraps_a_real_encoder(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "tiny_t5"
    t5_dir = path if (path / "model.safetensors").exists() else build_tiny_t5(path)
    plain = load_text_encoder(f"t5:{t5_dir}")
    cached = load_text_encoder(f"t5:{t5_dir}", cache_size=8)
    assert isinstance(cached, CachedTextEncoder) and (cached.dim, cached.max_length) == (32, 512)
    calls: list[int] = []
    cached.encoder.model.register_forward_hook(lambda *_: calls.append(1))  # type: ignore[attr-defined]
    prompts = [TINY_CAPTIONS[0], "two cats"]
    first = cached.encode(prompts)
    second = cached.encode(prompts)
    assert len(calls) == 1
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.pooled, second.pooled)
    reference = plain.encode(prompts)
    assert torch.equal(first.mask, reference.mask)
    assert torch.allclose(first.tokens, reference.tokens, atol=1e-5)


def test_cache_validates_prompts_like_any_encoder() -> None:
    from cascade.errors import UserError

    with pytest.raises(UserError, match="prompt 1 is empty"):
        CachedTextEncoder(CountingEncoder()).encode(["ok", " "])


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CachedTextEncoder(CountingEncoder(), max_items=0)
