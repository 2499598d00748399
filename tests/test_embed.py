"""Precomputed text embeddings in webdataset shards: data_pipeline.embed."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cascade.errors import UserError  # noqa: E402
from cascade.text import TextEncoder, TruncationWarning, load_text_encoder  # noqa: E402
from cascade.text.testing import TINY_CAPTIONS, build_tiny_t5  # noqa: E402
from data_pipeline.embed import decode_embedding, embed_shards, encode_embedding  # noqa: E402


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    path = tmp_path_factory.getbasetemp() / "tiny_t5"
    t5_dir = path if (path / "model.safetensors").exists() else build_tiny_t5(path)
    return load_text_encoder(f"t5:{t5_dir}")


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def _sample(key: str, caption: bytes | None) -> list[tuple[str, bytes]]:
    members = [(f"{key}.png", os.urandom(64)), (f"{key}.json", json.dumps({"key": key}).encode())]
    return members + ([(f"{key}.txt", caption)] if caption is not None else [])


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    captions = [TINY_CAPTIONS[i].encode() + b"\n" for i in range(5)]
    _write_tar(src / "a-000000.tar", [m for i, c in enumerate(captions) for m in _sample(f"a{i:03d}", c)])
    _write_tar(src / "sub" / "b-000000.tar", [("README", b"no key")] + _sample("b000", b"two cats"))
    return src


def test_every_sample_gains_one_embedding_and_keeps_its_members(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    counts = embed_shards(shards, out, t5, batch_size=2, progress=False)
    assert counts == {"shards": 2, "samples": 6, "embedded": 6, "skipped": 0, "truncated": 0}
    for rel in ("a-000000.tar", "sub/b-000000.tar"):
        before, after = _members(shards / rel), _members(out / rel)
        assert [m for m in after if not m[0].endswith(".emb.safetensors")] == before
        names = [name for name, _ in after]
        keys = sorted({n.split(".")[0] for n in names if "." in n})
        for key in keys:  # the embedding comes right after the sample's own members
            last = max(i for i, n in enumerate(names) if n.startswith(key + "."))
            assert names.index(f"{key}.emb.safetensors") == last
    assert sorted(p.name for p in out.rglob("*")) == ["a-000000.tar", "b-000000.tar", "sub"]  # no temp files


def test_stored_embedding_is_the_captions_cut_to_its_length(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    embed_shards(shards, tmp_path / "out", t5, progress=False)
    blobs = dict(_members(tmp_path / "out" / "a-000000.tar"))
    raw = blobs["a002.emb.safetensors"]
    tokens, pooled = decode_embedding(raw, dim=32, pooled_dim=32)
    want = t5.encode([TINY_CAPTIONS[2]])  # the caption without its trailing newline
    assert tokens.shape == (int(want.lengths[0]), 32) and tokens.dtype == torch.float32
    assert torch.allclose(tokens, want.tokens[0], atol=2e-3, rtol=2e-3)  # float16 storage
    assert torch.allclose(pooled, want.pooled[0], atol=2e-3, rtol=2e-3)
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["__metadata__"] == {"encoder": t5.name}
    assert header["tokens"]["dtype"] == "F16" and header["pooled"]["shape"] == [32]


def test_webdataset_reads_the_output(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    import webdataset as wds

    embed_shards(shards, tmp_path / "out", t5, progress=False)
    samples = list(wds.WebDataset(str(tmp_path / "out" / "a-000000.tar"), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"a{i:03d}" for i in range(5)]
    assert all(decode_embedding(s["emb.safetensors"])[0].shape[1] == 32 for s in samples)


def test_running_again_replaces_the_embedding(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    embed_shards(shards, tmp_path / "once", t5, progress=False)
    embed_shards(tmp_path / "once", tmp_path / "twice", t5, progress=False)
    assert _members(tmp_path / "twice" / "a-000000.tar") == _members(tmp_path / "once" / "a-000000.tar")


@pytest.mark.parametrize(
    ("caption", "message"),
    [
        (b"caf\xe9 au lait", r"a-000000.tar: caption of sample 'bad' is not valid UTF-8 \(byte 0xe9"),
        (b"  \n", r"caption of sample 'bad' is empty"),
        (None, r"sample 'bad' has no .txt caption"),
    ],
)
def test_bad_caption_stops_or_is_skipped(
    t5: TextEncoder, tmp_path: Path, caption: bytes | None, message: str
) -> None:
    src = tmp_path / "src"
    members = _sample("ok0", b"two cats") + _sample("bad", caption) + _sample("ok1", b"one moon")
    _write_tar(src / "a-000000.tar", members)
    with pytest.raises(UserError, match=message):
        embed_shards(src, tmp_path / "out", t5, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # neither a partial shard nor a temp file
    counts = embed_shards(src, tmp_path / "out", t5, progress=False, skip_bad=True)
    assert (counts["samples"], counts["embedded"], counts["skipped"]) == (2, 2, 1)
    names = [n for n, _ in _members(tmp_path / "out" / "a-000000.tar")]
    assert not any(n.startswith("bad.") for n in names) and "ok1.emb.safetensors" in names


def test_failure_midway_leaves_no_partial_shard(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    class Failing(TextEncoder):
        def __init__(self) -> None:
            super().__init__("failing")
            self.calls = 0

        dim = pooled_dim = 32  # type: ignore[assignment]
        max_length = 512  # type: ignore[assignment]

        def _encode(self, prompts: list[str]):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return t5._encode(prompts)

    with pytest.raises(RuntimeError, match="out of memory"):
        embed_shards(shards, tmp_path / "out", Failing(), batch_size=2, progress=False)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_truncated_captions_are_counted(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    short = load_text_encoder(t5.name, max_length=8)
    with pytest.warns(TruncationWarning) as record:
        counts = embed_shards(shards, tmp_path / "out", short, progress=False)
    assert len(record) == 1 and counts["truncated"] == 5  # every TINY caption has more than 8 tokens
    tokens, _ = decode_embedding(dict(_members(tmp_path / "out" / "a-000000.tar"))["a000.emb.safetensors"])
    assert tokens.shape[0] == 8


def test_folder_errors(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="shard folder not found"):
        embed_shards(tmp_path / "missing", tmp_path / "out", t5, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no webdataset shards \(\*.tar\)"):
        embed_shards(tmp_path / "empty", tmp_path / "out", t5, progress=False)
    with pytest.raises(UserError, match="must differ from the input folder"):
        embed_shards(shards, shards, t5, progress=False)


def _blob(**tensors: torch.Tensor) -> bytes:
    from safetensors.torch import save

    return save(tensors)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00" * 3, "not a safetensors blob"),
        (pickle.dumps({"tokens": [[1.0]], "pooled": [1.0]}), "not a safetensors blob"),
        (_blob(tokens=torch.zeros(2, 4)), r"tensors \['tokens'\]"),
        (_blob(tokens=torch.zeros(2, 4, 1), pooled=torch.zeros(4)), "expected"),
        (_blob(tokens=torch.zeros(0, 4), pooled=torch.zeros(4)), "expected"),
        (_blob(tokens=torch.zeros(2, 4, dtype=torch.int32), pooled=torch.zeros(4)), "expected float"),
        (_blob(tokens=torch.full((2, 4), float("nan")), pooled=torch.zeros(4)), "inf or nan"),
    ],
)
def test_decode_embedding_rejects_malformed_blobs(raw: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message):
        decode_embedding(raw)


def test_decode_embedding_checks_widths_and_encode_refuses_fp16_overflow() -> None:
    raw = encode_embedding(torch.ones(3, 4), torch.ones(2))
    assert [tuple(t.shape) for t in decode_embedding(raw)] == [(3, 4), (2,)]
    with pytest.raises(UserError, match="token width 4, expected 8"):
        decode_embedding(raw, dim=8)
    with pytest.raises(UserError, match="pooled width 2, expected 4"):
        decode_embedding(raw, pooled_dim=4)
    with pytest.raises(UserError, match="does not fit in float16"):
        encode_embedding(torch.full((1, 4), 1e6), torch.ones(2))


def test_a_damaged_shard_is_a_clear_error(t5: TextEncoder, shards: Path, tmp_path: Path) -> None:
    shard = shards / "a-000000.tar"
    whole = shard.read_bytes()
    for cut in (1500, 1024 + 512 + 100, 4096):  # in a header, in padding, at a header boundary
        shard.write_bytes(whole[:cut])  # tarfile alone would stop early without an error
        with pytest.raises(UserError, match="cannot read shard .*a-000000.tar"):
            embed_shards(shards, tmp_path / "out", t5, progress=False, skip_bad=True)
        assert not (tmp_path / "out" / "a-000000.tar").exists()
    corrupt = bytearray(whole)
    corrupt[2048 + 148 : 2048 + 156] = b"garbage!"  # the checksum field of the header of a000.txt
    shard.write_bytes(bytes(corrupt))
    with pytest.raises(UserError, match="truncated or damaged at byte 2048"):
        embed_shards(shards, tmp_path / "out", t5, progress=False, skip_bad=True)
