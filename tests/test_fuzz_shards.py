"""Fuzz: 240 damaged samples of every kind among good ones; every good sample is read exactly once,
every damaged one is skipped and counted under its reason, and nothing raises."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image

from data_pipeline.loader import DecodeOptions, StageSizes, make_loader
from data_pipeline.shards import ShardWriter

DAMAGED = 240


def png(rng: random.Random, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    array = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def embedding(rows: int, dim: int = 8) -> bytes:
    return safetensors.torch.save({"emb": torch.randn(rows, dim)})


def decode(raw: bytes) -> torch.Tensor:
    return safetensors.torch.load(raw)["emb"]


def damaged_sample(kind: str, rng: random.Random) -> dict:
    """A sample broken in one way; returns its members (the key is added by the caller)."""
    good_png = png(rng)
    good = {"png": good_png, "txt": b"a red cube", "emb.safetensors": embedding(4)}
    if kind == "corrupt_image":
        return {**good, "png": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))}
    if kind == "truncated_png":
        return {**good, "png": good_png[: rng.randrange(8, len(good_png) // 2)]}
    if kind == "bad_mode":
        return {**good, "png": png(rng, mode=rng.choice(["L", "1", "P", "RGBA", "LA", "I;16"]))}
    if kind == "too_small":
        return {**good, "png": png(rng, (rng.randrange(1, 16), rng.randrange(1, 40)))}
    if kind == "missing_caption":
        return {k: v for k, v in good.items() if k != "txt"}
    if kind == "empty_caption":
        return {**good, "txt": rng.choice([b"", b" ", b"\n\t  \n"])}
    if kind == "bad_caption_encoding":
        return {**good, "txt": b"caf" + bytes([rng.choice([0xE9, 0xFF, 0xC3, 0x80])]) + b" x"}
    if kind == "caption_too_long":
        return {**good, "txt": b"a" * rng.choice([1001, 50_000, 1_000_000])}
    if kind == "missing_image":
        return {k: v for k, v in good.items() if k != "png"}
    if kind == "bad_embedding":
        return {**good, "emb.safetensors": bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))}
    if kind == "bad_embedding_shape":
        return {**good, "emb.safetensors": embedding(rng.choice([1, 3, 5, 9]), rng.choice([7, 8, 9]))}
    if kind == "missing_embedding":
        return {k: v for k, v in good.items() if k != "emb.safetensors"}
    raise ValueError(kind)


REASON = {"truncated_png": "corrupt_image"}
KINDS = ("corrupt_image", "truncated_png", "bad_mode", "too_small", "missing_caption", "empty_caption",
         "bad_caption_encoding", "caption_too_long", "missing_image", "bad_embedding", "bad_embedding_shape",
         "missing_embedding")


def test_fuzzed_shards(tmp_path: Path) -> None:
    rng = random.Random(1234)
    samples, good_keys, expected = [], set(), Counter()
    for i in range(DAMAGED):
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        samples.append({"__key__": f"bad{i:04d}", **damaged_sample(kind, rng)})
        expected[REASON.get(kind, kind)] += 1
        for _ in range(rng.randrange(0, 2)):
            key = f"good{len(good_keys):04d}"
            samples.append({"__key__": key, "png": png(rng), "txt": json.dumps(key).encode(), "emb.safetensors": embedding(4)})
            good_keys.add(key)
    with ShardWriter(tmp_path, prefix="fuzz", maxcount=37) as writer:
        for sample in samples:
            writer.write(sample)
    options = DecodeOptions(embedding_decoder=decode, embedding_shape=(4, 8), max_caption_chars=1000)
    seen: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for rank in range(2):
        loader = make_loader(tmp_path, batch_size=5, stage=StageSizes(16), rank=rank, world_size=2, num_workers=0,
                             options=options, shuffle_buffer=8)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 16, 16) and torch.isfinite(batch["image"]).all()
            seen.update(batch["key"])
        counts.update(loader.stats.as_dict())
    assert sum(expected.values()) == DAMAGED and len(good_keys) > 50
    assert set(seen) == good_keys and set(seen.values()) == {1}
    assert dict(counts) == dict(expected)
