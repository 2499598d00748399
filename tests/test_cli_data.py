"""``cascade data world|ingest``: shards, reproducibility, progress and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade.cli import main
from data_pipeline.loader import StageSizes, make_loader
from data_pipeline.shards import SkipStats, iter_samples, list_shards


def _samples(out: Path) -> list[dict]:
    return [raw for url in list_shards(out) for raw in iter_samples(url, SkipStats())]


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_world_writes_captioned_shards_with_a_progress_bar(tmp_path: Path, capsys) -> None:
    from data_pipeline.world import Scene, caption, render_image, sample_scene

    out = tmp_path / "out"
    assert main(["data", "world", "--split", "train", "--size", "16", "--count", "5", "--seed", "10",
                 "--maxcount", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "5/5" in captured.err and "wrote 5 train images of 16 px" in captured.out
    assert [Path(u).name for u in list_shards(out)] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    samples = _samples(out)
    assert [s["__key__"] for s in samples] == [f"train-{10 + i:09d}" for i in range(5)]
    for i, sample in enumerate(samples):
        scene = sample_scene("train", 10 + i)
        assert set(sample) - {"__key__", "__url__", "__index__"} == {"png", "txt", "json"}
        np.testing.assert_array_equal(_png(sample["png"]), render_image(scene, 16))
        assert sample["txt"].decode() == caption(scene, seed=10 + i, drop_words=True)  # train captions drop words
        assert Scene.from_json(sample["json"].decode()) == scene


def test_world_clips_are_frame_strips_the_loader_reads(tmp_path: Path) -> None:
    from data_pipeline.world import caption, render_clip, sample_scene

    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "2", "--clips", "--frames", "3",
                 "--out", str(tmp_path)]) == 0
    samples = _samples(tmp_path)
    assert _png(samples[0]["clip.png"]).shape == (16, 48, 3)
    scene = sample_scene("eval", 1, clip=True, frames=3)
    assert samples[1]["txt"].decode() == caption(scene, seed=1)  # eval captions keep every word
    (batch,) = list(make_loader(tmp_path, batch_size=2, stage=StageSizes(16, frames=3), shuffle_buffer=1))
    index = batch["key"].index("eval-000000001")
    expected = render_clip(scene, 16)
    np.testing.assert_allclose(((batch["frames"][index] + 1) * 127.5).permute(0, 2, 3, 1).numpy(), expected, atol=1e-3)


def test_world_shards_are_reproducible_and_extendable(tmp_path: Path) -> None:
    def run(out: Path, seed: int, count: int) -> None:
        assert main(["data", "world", "--split", "heldout", "--size", "16", "--count", str(count), "--seed",
                     str(seed), "--out", str(out), "--prefix", f"s{seed}"]) == 0

    run(tmp_path / "a", 0, 4)
    run(tmp_path / "b", 0, 2)
    run(tmp_path / "b", 2, 2)  # a second run extends the first
    strip = lambda s: {k: v for k, v in s.items() if k != "__url__"}  # noqa: E731
    assert [strip(s) for s in _samples(tmp_path / "a")] == [
        {**strip(s), "__index__": i} for i, s in enumerate(_samples(tmp_path / "b"))]
    assert main(["data", "world", "--split", "heldout", "--size", "16", "--count", "4", "--out",
                 str(tmp_path / "c"), "--prefix", "s0", "--workers", "2"]) == 0
    assert (tmp_path / "a" / "s0-000000.tar").read_bytes() == (tmp_path / "c" / "s0-000000.tar").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--split", "train", "--size", "8", "--count", "1"], "--size must be at least 16"),
    (["--split", "train", "--size", "16", "--count", "0"], "--count must be at least 1"),
    (["--split", "nope", "--size", "16", "--count", "1"], "unknown split 'nope' (choose from: train, eval, heldout)"),
    (["--split", "train", "--size", "16", "--count", "1", "--frames", "4"], "--frames needs --clips"),
    (["--split", "train", "--size", "16", "--count", "1", "--clips", "--frames", "0"], "--frames must be at least 1"),
    (["--split", "train", "--size", "16", "--count", "1", "--maxcount", "0"], "--maxcount must be at least 1"),
    (["--split", "train", "--size", "16", "--count", "1", "--workers", "0"], "--workers must be at least 1"),
    (["--split", "train", "--size", "16", "--count", "1", "--prefix", "a.b"], "bad shard prefix 'a.b'"),
])
def test_world_bad_arguments_are_one_line_errors(tmp_path: Path, capsys, args, message) -> None:
    assert main(["data", "world", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cascade data: error: {message}") and err.count("\n") == 1


def test_out_that_is_a_file_and_missing_src(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "1",
                 "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == f"cascade data: error: --out {tmp_path / 'file'} is a file, not a folder"
    assert main(["data", "ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--size", "16"]) == 2
    assert capsys.readouterr().err.strip() == f"cascade data: error: SRC {tmp_path / 'nowhere'} does not exist"
    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "1", "--out", str(tmp_path / "o")]) == 0
    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "1", "--out", str(tmp_path / "o")]) == 2
    assert "already holds 1 shard(s) named eval-*.tar (pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data"], ["data", "world"], ["data", "ingest"], ["data", "embed"]])
def test_each_subcommand_has_its_own_help(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cascade {' '.join(argv)}" in capsys.readouterr().out


def test_ingest_command(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (20, 24), (10, 200, 30)).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"photo {name}")
    (src / "c.png").write_bytes(b"broken")
    (src / "c.txt").write_text("broken")
    assert main(["data", "ingest", str(src), "--out", str(tmp_path / "out"), "--size", "16"]) == 0
    captured = capsys.readouterr()
    assert "ingest: 2 written in 1 shard(s), 1 skipped (corrupt_image 1); report " in captured.out
    assert "3img" in captured.err.replace(" ", "")  # the progress bar counted 3 sources
    assert sorted(s["txt"] for s in _samples(tmp_path / "out")) == [b"photo a", b"photo b"]
    (src / "a.png").unlink()
    (src / "b.png").unlink()
    assert main(["data", "ingest", str(src), "--out", str(tmp_path / "o2"), "--size", "16"]) == 2
    assert "error: no usable sample in" in capsys.readouterr().err


def test_real_world_shards_load_for_training(tmp_path: Path) -> None:
    assert main(["data", "world", "--split", "train", "--size", "32", "--count", "3", "--out", str(tmp_path)]) == 0
    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "2", "--clips", "--frames", "2",
                 "--out", str(tmp_path / "clips")]) == 0
    loader = make_loader(tmp_path, batch_size=3, stage=StageSizes(32, low_res=16))
    (batch,) = list(loader)
    assert batch["image"].shape == (3, 3, 32, 32) and loader.stats.total == 0
    assert all(caption.strip() for caption in batch["caption"])
    (clips,) = list(make_loader(tmp_path / "clips", batch_size=2, stage=StageSizes(16, frames=2)))
    assert clips["frames"].shape == (2, 2, 3, 16, 16)


def test_embed_command_adds_compact_embeddings(tmp_path: Path, capsys) -> None:
    from cascade.text.testing import build_tiny_open_clip
    from data_pipeline.embed import decode_embedding

    clip = build_tiny_open_clip(tmp_path / "clip")
    assert main(["data", "world", "--split", "eval", "--size", "16", "--count", "3", "--out", str(tmp_path / "w")]) == 0
    assert main(["data", "embed", "--encoder", f"clip:local-dir:{clip}", "--in", str(tmp_path / "w"),
                 "--out", str(tmp_path / "e")]) == 0
    assert "embedded 3 of 3 samples in 1 shard(s)" in capsys.readouterr().out
    for sample in _samples(tmp_path / "e"):
        tokens, pooled = decode_embedding(sample["emb.safetensors"])
        assert tokens.shape[1] == 32 and 1 < tokens.shape[0] <= 16 and pooled.shape == (16,)
    assert main(["data", "embed", "--encoder", f"clip:local-dir:{tmp_path / 'nope'}", "--in", str(tmp_path / "w"),
                 "--out", str(tmp_path / "e2")]) == 2
    assert "text encoder folder not found" in capsys.readouterr().err
