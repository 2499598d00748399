"""Shard writing, listing and the robust reader (truncation, corrupt headers, pipes)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cascade.errors import UserError
from data_pipeline.shards import (
    ShardWriter, SkipStats, clip_strip, iter_samples, list_shards, prepare_out_dir, sample_record, split_key,
    unstrip_clip,
)


def _records(n: int, size: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return [sample_record(f"s{i:04d}", caption=f"caption {i}", meta={"i": i},
                          image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for i in range(n)]


def _write(out: Path, n: int, maxcount: int = 1000, prefix: str = "data") -> list[Path]:
    with ShardWriter(out, prefix=prefix, maxcount=maxcount) as writer:
        for record in _records(n):
            writer.write(record)
    return writer.shards


def _keys(url: str | Path) -> tuple[list[str], dict[str, int]]:
    stats = SkipStats()
    return [raw["__key__"] for raw in iter_samples(url, stats)], stats.as_dict()


def test_writer_splits_by_maxcount_names_shards_and_leaves_no_temp_files(tmp_path: Path) -> None:
    shards = _write(tmp_path, 10, maxcount=4, prefix="train")
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert sorted(os.listdir(tmp_path)) == [p.name for p in shards]
    assert [len(_keys(p)[0]) for p in shards] == [4, 4, 2]
    stats = SkipStats()
    first = next(iter_samples(shards[0], stats))
    assert set(first) == {"__key__", "__url__", "__index__", "png", "txt", "json"}
    assert first["txt"] == b"caption 0" and first["json"] == b'{"i": 0}'


def test_writer_is_deterministic(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 5), _write(tmp_path / "b", 5)
    assert a[0].read_bytes() == b[0].read_bytes()


def test_writer_discards_the_unfinished_shard_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, maxcount=3) as writer:
            for i, record in enumerate(_records(5)):
                writer.write(record)
                if i == 4:
                    raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["data-000000.tar"]  # the finished shard stays, no temp file
    assert len(_keys(tmp_path / "data-000000.tar")[0]) == 3


def test_our_shards_read_the_same_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    (shard,) = _write(tmp_path, 6)
    ours = [(raw["__key__"], raw["png"], raw["txt"]) for raw in iter_samples(shard, SkipStats())]
    theirs = [(s["__key__"], s["png"], s["txt"]) for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert ours == theirs


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_reader_agrees_with_tarfile_on_long_and_prefixed_names(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "x.tar"
    folder = "d" * 60 + "/" + "e" * 60 if fmt == tarfile.USTAR_FORMAT else "d" * 150
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in [(f"{folder}/k1.txt", b"one"), (f"{folder}/k1.png", b"img"), ("k2.txt", b"two")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(iter_samples(path, SkipStats()))
    assert [s["__key__"] for s in samples] == [f"{folder}/k1", "k2"]
    assert samples[0]["txt"] == b"one" and samples[0]["png"] == b"img" and samples[1]["txt"] == b"two"


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, data offset)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def _sample_start(path: Path, key: str) -> int:
    """Header offset of the first member of sample ``key``."""
    return min(h for name, (h, _) in _member_offsets(path).items() if name.startswith(key + "."))


def test_truncated_inside_a_member_drops_only_that_sample(tmp_path: Path) -> None:
    (shard,) = _write(tmp_path, 8)
    _, data_start = _member_offsets(shard)["s0005.png"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: data_start + 10])
    keys, counts = _keys(cut)
    assert keys == [f"s{i:04d}" for i in range(5)]
    assert counts == {"truncated_tar": 1}


def test_truncated_inside_a_header_keeps_the_whole_samples_before(tmp_path: Path) -> None:
    (shard,) = _write(tmp_path, 8)
    header = _sample_start(shard, "s0003")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: header + 100])
    keys, counts = _keys(cut)
    assert keys == ["s0000", "s0001", "s0002"]
    assert counts == {"truncated_tar": 1}


def test_cut_exactly_between_members_is_a_clean_end(tmp_path: Path) -> None:
    (shard,) = _write(tmp_path, 4)
    header = _sample_start(shard, "s0002")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:header])
    assert _keys(cut) == (["s0000", "s0001"], {})


def test_a_corrupt_header_is_skipped_and_the_rest_of_the_shard_is_read(tmp_path: Path) -> None:
    (shard,) = _write(tmp_path, 6)
    header, _ = _member_offsets(shard)["s0002.png"]
    data = bytearray(shard.read_bytes())
    data[header: header + 20] = b"\xff" * 20  # garbage name, checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    samples = list(iter_samples(bad, stats := SkipStats()))
    assert [s["__key__"] for s in samples] == [f"s{i:04d}" for i in range(6)]
    assert "png" not in samples[2] and samples[2]["txt"] == b"caption 2"  # only the damaged member is gone
    assert all("png" in s for i, s in enumerate(samples) if i != 2)
    assert stats.as_dict() == {"corrupt_tar_header": 1}


def test_pipe_urls_and_unreadable_shards(tmp_path: Path) -> None:
    (shard,) = _write(tmp_path, 3)
    assert _keys(f"pipe:cat {shard}") == (["s0000", "s0001", "s0002"], {})
    assert _keys(f"pipe:cat {shard}; exit 3") == (["s0000", "s0001", "s0002"], {"pipe_error": 1})
    assert _keys(tmp_path / "missing.tar") == ([], {"unreadable_shard": 1})
    stats = SkipStats()
    next(iter_samples(f"pipe:cat {shard}", stats)).clear()  # stopping early is not an error
    assert stats.total == 0


def test_list_shards(tmp_path: Path) -> None:
    _write(tmp_path, 5, maxcount=2)
    (tmp_path / ".data-000009.tar.tmp1").write_bytes(b"")  # an unfinished shard is never listed
    names = [f"{tmp_path}/data-00000{i}.tar" for i in range(3)]
    assert list_shards(tmp_path) == names
    assert list_shards(f"{tmp_path}/data-*.tar") == names
    assert list_shards(f"{tmp_path}/data-{{000000..000001}}.tar") == names[:2]
    assert list_shards([names[2], "pipe:cat x"]) == [names[2], "pipe:cat x"]


def test_prepare_out_dir_refuses_files_and_stale_shards(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare_out_dir(tmp_path / "file", "data")
    _write(tmp_path / "out", 3, maxcount=1)
    with pytest.raises(UserError, match="already holds 3 shard"):
        prepare_out_dir(tmp_path / "out", "data")
    prepare_out_dir(tmp_path / "out", "other")  # another prefix is fine
    prepare_out_dir(tmp_path / "out", "data", overwrite=True)
    assert list_shards(tmp_path / "out") == []


def test_clip_strip_round_trip_and_keys() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    strip = clip_strip(frames)
    assert strip.shape == (6, 30, 3)
    np.testing.assert_array_equal(strip[:, 12:18], frames[2])
    np.testing.assert_array_equal(unstrip_clip(strip), frames)
    assert split_key("a/b/k01.clip.PNG") == ("a/b/k01", "clip.png")
    assert split_key("._k01.png") is None and split_key("noext") is None
    with pytest.raises(ValueError):
        sample_record("bad.key", caption="x", image=frames[0])
