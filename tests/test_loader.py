"""The training loader: robustness, exactly-once over ranks x workers, SR pairs, clips, resume."""

from __future__ import annotations

import io
import itertools
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader

from cascade.errors import UserError
from data_pipeline.degrade import downsample, gaussian_blur, gaussian_kernel, make_low_res
from data_pipeline.loader import DecodeOptions, ShardDataset, StageSizes, make_loader, shard_plan
from data_pipeline.shards import ShardWriter, clip_strip, png_bytes

RNG = np.random.default_rng(0)


def _png(size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    from PIL import Image

    array = RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _emb(rows: int = 4) -> bytes:
    return safetensors.torch.save({"emb": torch.randn(rows, 8)})


def _good(key: str, **extra: bytes) -> dict:
    return {"__key__": key, "png": _png(), "txt": f"caption of {key}".encode(), "emb.safetensors": _emb(), **extra}


def _write(out: Path, samples: list[dict], prefix: str = "data", maxcount: int = 1000) -> list[Path]:
    with ShardWriter(out, prefix=prefix, maxcount=maxcount) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.shards


def _good_shards(out: Path, counts: list[int]) -> list[str]:
    """Shards with counts[j] good samples each; returns all keys."""
    keys = []
    for j, n in enumerate(counts):
        batch = [_good(f"s{j}x{i:03d}") for i in range(n)]
        _write(out, batch, prefix=f"p{j}")
        keys += [s["__key__"] for s in batch]
    return keys


def _decoder(raw: bytes) -> torch.Tensor:
    return safetensors.torch.load(raw)["emb"]


OPTIONS = DecodeOptions(max_caption_chars=100, embedding_decoder=_decoder, embedding_shape=(4, 8))
BAD = {  # reason -> a sample that must be skipped for it
    "corrupt_image": {"png": b"\x89PNG\r\n\x1a\n not an image", "txt": b"x"},
    "missing_caption": {"png": _png()},
    "bad_caption_encoding": {"png": _png(), "txt": b"caf\xe9 \xff"},
    "empty_caption": {"png": _png(), "txt": b" \n "},
    "caption_too_long": {"png": _png(), "txt": b"a" * 101},
    "bad_mode": {"png": _png(mode="L"), "txt": b"grey"},
    "too_small": {"png": _png((12, 20)), "txt": b"small"},
    "missing_image": {"txt": b"no image", "json": b"{}"},
    "bad_embedding": {"png": _png(), "txt": b"x", "emb.safetensors": b"garbage"},
    "bad_embedding_shape": {"png": _png(), "txt": b"x", "emb.safetensors": _emb(rows=3)},
    "missing_embedding": {"png": _png(), "txt": b"x", "emb.safetensors": None},
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """Shard 0: good samples interleaved with one bad sample per reason and a truncated PNG;
    shard 1: good samples, cut inside its last sample; shard 2: a corrupt tar header."""
    out = tmp_path_factory.mktemp("damaged")
    good: list[dict] = []
    mixed = []
    for i, (reason, members) in enumerate(BAD.items()):
        bad = {"__key__": f"bad-{reason.replace('_', '-')}", "emb.safetensors": _emb(), **members}
        mixed += [_good(f"a{i:03d}"), {k: v for k, v in bad.items() if v is not None}]
    mixed += [_good("a100", png=_png((24, 20))),
              {"__key__": "bad-truncated-png", "png": _png()[:60], "txt": b"x", "emb.safetensors": _emb()}]
    good += [s for s in mixed if s["__key__"].startswith("a")]
    _write(out, mixed, prefix="d0")
    (cut,) = _write(out, [_good(f"b{i:03d}") for i in range(6)], prefix="d1")
    with tarfile.open(cut) as tar:  # cut inside the data of the last sample's first member
        end = min(m.offset_data for m in tar.getmembers() if m.name.startswith("b005.")) + 10
    cut.write_bytes(cut.read_bytes()[:end])
    good += [{"__key__": f"b{i:03d}"} for i in range(5)]
    (hdr,) = _write(out, [_good(f"c{i:03d}") for i in range(4)], prefix="d2")
    data = bytearray(hdr.read_bytes())
    name = data.index(b"c001.png")  # the name field, at the start of that member's header
    data[name: name + 4] = b"\xff\xff\xff\xff"  # bad checksum: c001 loses its png
    hdr.write_bytes(bytes(data))
    good += [{"__key__": f"c{i:03d}"} for i in (0, 2, 3)]
    return out, {s["__key__"] for s in good}


EXPECTED_COUNTS = {**{reason: 1 for reason in BAD}, "corrupt_image": 2, "missing_image": 2,
                   "truncated_tar": 1, "corrupt_tar_header": 1}


@pytest.mark.parametrize("world_size,workers", [(1, 0), (1, 2), (2, 2)])
def test_damaged_shards_are_read_to_the_end_with_every_good_sample(damaged, world_size: int, workers: int) -> None:
    out, good = damaged
    seen: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for rank in range(world_size):
        loader = make_loader(out, batch_size=3, stage=StageSizes(16, low_res=8), rank=rank, world_size=world_size,
                             num_workers=workers, options=OPTIONS, shuffle_buffer=4)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 16, 16) and batch["low_res"].shape[1:] == (3, 8, 8)
            assert batch["text_emb"].shape[1:] == (4, 8)
            assert batch["image"].min() >= -1 and batch["image"].max() <= 1
            seen.update(batch["key"])
        counts.update(loader.stats.as_dict())
    assert set(seen) == good and set(seen.values()) == {1}
    assert dict(counts) == EXPECTED_COUNTS


def test_shard_plan_covers_every_sample_once_and_balances() -> None:
    for num_shards, slots in itertools.product(range(1, 11), range(1, 9)):
        sizes = [7] * num_shards
        owners: Counter[tuple[int, int]] = Counter()
        per_slot = []
        for slot in range(slots):
            mine = [(p, i) for p, stride, offset in shard_plan(num_shards, slots, slot)
                    for i in range(sizes[p]) if i % stride == offset]
            owners.update(mine)
            per_slot.append(len(mine))
        assert set(owners) == {(p, i) for p in range(num_shards) for i in range(sizes[p])}
        assert set(owners.values()) == {1}
        assert max(per_slot) - min(per_slot) <= 7, (num_shards, slots, per_slot)


def _slot_keys(shards: Path, rank: int, world_size: int, workers: int) -> dict[int, list[str]]:
    dataset = ShardDataset(sorted(str(p) for p in shards.glob("*.tar")), StageSizes(16), batch_size=2,
                           rank=rank, world_size=world_size, shuffle_shards=False, shuffle_buffer=1)
    found: dict[int, list[str]] = {}
    for meta, batch in DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=lambda x: x):
        found.setdefault(meta.worker, [])
        found[meta.worker] += batch["key"] if batch is not None else []
    return found


def test_two_ranks_two_workers_one_shard_split_sample_by_sample(tmp_path: Path) -> None:
    keys = _good_shards(tmp_path, [13])
    for rank in range(2):
        found = _slot_keys(tmp_path, rank, 2, 2)
        for worker in range(2):  # slot = rank * workers + worker takes samples i = slot (mod 4)
            assert found[worker] == keys[rank * 2 + worker:: 4]


def test_two_ranks_two_workers_see_each_sample_once_with_remainder_shards(tmp_path: Path) -> None:
    keys = _good_shards(tmp_path, [5, 5, 5, 5, 5, 4])  # 6 shards on 4 slots: 4 whole, 2 split
    per_rank = []
    for rank in range(2):
        loader = make_loader(tmp_path, batch_size=3, stage=StageSizes(16), rank=rank, world_size=2,
                             num_workers=2, seed=3, epoch=1)
        per_rank.append([k for batch in loader for k in batch["key"]])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(keys)
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 5


def _epoch(loader, limit: int | None = None) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    return [(b["key"], b["image"], b["low_res"]) for b in itertools.islice(loader, limit)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_same_batches(tmp_path: Path, workers: int) -> None:
    _good_shards(tmp_path, [9, 8, 7])
    stage = StageSizes(16, low_res=8, crop=8, blur_sigma=(0.3, 1.0))

    def loader():
        return make_loader(tmp_path, batch_size=2, stage=stage, num_workers=workers, seed=5, epoch=2,
                           shuffle_buffer=4)

    full = _epoch(loader())
    first = loader()
    head = _epoch(first, 3)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    tail = _epoch(resumed)
    assert [k for k, _, _ in head + tail] == [k for k, _, _ in full]
    for (_, image_a, low_a), (_, image_b, low_b) in zip(head + tail, full):
        assert torch.equal(image_a, image_b) and torch.equal(low_a, low_b)
    assert resumed.position.epoch == 3


def test_epochs_reshuffle_and_seeds_repeat(tmp_path: Path) -> None:
    keys = _good_shards(tmp_path, [6, 6, 6])
    loader = make_loader(tmp_path, batch_size=4, stage=StageSizes(16), seed=1, shuffle_buffer=8)
    epoch0 = [k for b in loader for k in b["key"]]
    epoch1 = [k for b in loader for k in b["key"]]
    again = [k for b in make_loader(tmp_path, batch_size=4, stage=StageSizes(16), seed=1, shuffle_buffer=8)
             for k in b["key"]]
    assert sorted(epoch0) == sorted(epoch1) == sorted(keys)
    assert epoch0 != epoch1 and epoch0 == again


def test_sr_crops_pair_exactly(tmp_path: Path) -> None:
    _good_shards(tmp_path, [4])
    batch = next(iter(make_loader(tmp_path, batch_size=4, stage=StageSizes(16, low_res=4, crop=8))))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["low_res"].shape == (4, 3, 2, 2)
    torch.testing.assert_close(downsample(batch["image"], 2), batch["low_res"], atol=1e-6, rtol=0)


def test_clips_decode_to_frames(tmp_path: Path) -> None:
    frames = RNG.integers(0, 256, (3, 4, 16, 16, 3), dtype=np.uint8)  # 3 clips of 4 frames
    _write(tmp_path, [{"__key__": f"v{i}", "clip.png": png_bytes(clip_strip(f)), "txt": b"a clip"}
                      for i, f in enumerate(frames)] + [{"__key__": "v9", "clip.png": _png((48, 16)), "txt": b"x"}])
    loader = make_loader(tmp_path, batch_size=3, stage=StageSizes(16, low_res=8, frames=4), shuffle_buffer=1)
    (batch,) = list(loader)
    assert batch["frames"].shape == (3, 4, 3, 16, 16) and batch["low_res"].shape == (3, 4, 3, 8, 8)
    expected = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    torch.testing.assert_close(batch["frames"], expected)
    assert loader.stats.as_dict() == {"bad_frames": 1}


def test_pipe_urls(tmp_path: Path) -> None:
    keys = _good_shards(tmp_path, [5])
    loader = make_loader([f"pipe:cat {tmp_path}/p0-000000.tar"], batch_size=10, stage=StageSizes(16))
    assert sorted(k for b in loader for k in b["key"]) == keys


def test_gaussian_blur_and_area_downsample_match_their_definitions() -> None:
    kernel = gaussian_kernel(1.5)
    t = torch.arange(kernel.numel(), dtype=torch.float64) - kernel.numel() // 2
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (kernel.double() * t**2).sum().item() == pytest.approx(1.5**2, rel=0.03)  # variance sigma^2
    flat = torch.full((2, 3, 9, 9), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, 1.2), flat)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(downsample(x, 2), x.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5)))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(make_low_res(x, 4, blur_sigma=(0.5, 1), generator=g1),
                               make_low_res(x, 4, blur_sigma=(0.5, 1), generator=g2))


def test_precomputed_embeddings_of_the_embed_module(tmp_path: Path) -> None:
    embed = pytest.importorskip("data_pipeline.embed")
    if not hasattr(embed, "encode_embedding"):
        pytest.skip("data_pipeline.embed has no encode_embedding")

    def emb(length: int, dim: int = 8) -> bytes:
        return embed.encode_embedding(torch.randn(length, dim), torch.randn(6))

    samples = [_good(f"e{i}", **{"emb.safetensors": emb(2 + i)}) for i in range(3)]
    samples += [_good("wide", **{"emb.safetensors": emb(3, dim=7)}), _good("junk", **{"emb.safetensors": b"xx"})]
    samples += [{k: v for k, v in _good("none").items() if k != "emb.safetensors"}]
    _write(tmp_path, samples)
    options = DecodeOptions(embedding_decoder=embed.decode_embedding, embedding_shape=((None, 8), (6,)))
    loader = make_loader(tmp_path, batch_size=8, stage=StageSizes(16), options=options, shuffle_buffer=1)
    (batch,) = list(loader)
    tokens, pooled = batch["text_emb"]
    assert batch["key"] == ["e0", "e1", "e2"] and pooled.shape == (3, 6)
    assert [t.shape for t in tokens] == [(2, 8), (3, 8), (4, 8)]  # ragged token sequences stay a list
    assert loader.stats.as_dict() == {"bad_embedding_shape": 1, "bad_embedding": 1, "missing_embedding": 1}


def test_a_saved_position_only_resumes_the_same_layout(tmp_path: Path) -> None:
    _good_shards(tmp_path, [4])
    state = make_loader(tmp_path, batch_size=2, stage=StageSizes(16), seed=1).state_dict()
    with pytest.raises(UserError, match="saved with"):
        make_loader(tmp_path, batch_size=2, stage=StageSizes(16), seed=2).load_state_dict(state)


def test_a_run_checkpointed_after_an_epoch_s_last_batch_resumes_into_the_next_epoch(tmp_path: Path) -> None:
    """9 samples in batches of 3: a checkpoint after the 3rd batch has read the whole epoch; resuming
    from it must start epoch 1, not stop with 'no usable sample' (seen resuming a 1024 px SR run)."""
    from cascade.training.loop import endless_batches

    _good_shards(tmp_path, [5, 4])
    stage = StageSizes(16, low_res=8, crop=8, blur_sigma=(0.3, 1.0))

    def loader():
        return make_loader(tmp_path, batch_size=3, stage=stage, seed=1, shuffle_buffer=4)

    first = loader()
    run = endless_batches(first)
    [next(run) for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == {"0": 9}
    resumed = loader()
    resumed.load_state_dict(state)
    after_resume = next(endless_batches(resumed))
    fresh = loader()
    fresh.set_epoch(1)
    assert after_resume["key"] == next(iter(fresh))["key"]
    assert resumed.position.epoch == 1


def test_shards_without_a_usable_sample_stop_training_with_a_clear_error(tmp_path: Path) -> None:
    from cascade.training.loop import endless_batches

    _good_shards(tmp_path, [2])
    stage = StageSizes(64, low_res=8, crop=8, blur_sigma=(0.3, 1.0))  # 16 px samples: all too small
    with pytest.raises(UserError, match="no usable sample"):
        next(endless_batches(make_loader(tmp_path, batch_size=2, stage=stage)))
