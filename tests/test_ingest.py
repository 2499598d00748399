"""Ingest of captioned image folders and img2dataset-style shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cascade.errors import UserError
from data_pipeline.ingest import REPORT_NAME, ingest
from data_pipeline.loader import StageSizes, make_loader
from data_pipeline.shards import ShardWriter, SkipStats, iter_samples, list_shards

RNG = np.random.default_rng(0)


def _image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    image = Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _outputs(out: Path) -> dict[str, dict]:
    """source name -> {"caption", "image" (uint8 array), "meta"} for every written sample."""
    found = {}
    for url in list_shards(out):
        for raw in iter_samples(url, SkipStats()):
            meta = json.loads(raw["json"])
            image = np.asarray(Image.open(io.BytesIO(raw["png"])))
            found[meta["source"]] = {"caption": raw["txt"].decode(), "image": image, "meta": meta}
    return found


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    good = {
        "a.png": _image_bytes(40, 40), "b.jpg": _image_bytes(64, 48, fmt="JPEG"),
        "sub/c.png": _image_bytes(48, 80, mode="RGBA"), "d.png": _image_bytes(32, 32, mode="L"),
        "e.webp": _image_bytes(36, 36, mode="P", fmt="WEBP"),
    }
    bad = {  # name -> (image bytes, caption bytes or None)
        "corrupt.png": (b"\x89PNG\r\n\x1a\nnonsense", b"a caption"),
        "truncated.jpg": (_image_bytes(64, 64, fmt="JPEG")[:300], b"a caption"),
        "nocaption.png": (_image_bytes(40, 40), None),
        "latin1.png": (_image_bytes(40, 40), "café".encode("latin-1")),
        "blank.png": (_image_bytes(40, 40), b"  \n"),
        "tiny.png": (_image_bytes(31, 100), b"too small"),
    }
    for name, data in good.items():
        (src / name).write_bytes(data)
        (src / name).with_suffix(".txt").write_text(f"  caption of\n{name} ", encoding="utf-8")
    for name, (data, caption) in bad.items():
        (src / name).write_bytes(data)
        if caption is not None:
            (src / name).with_suffix(".txt").write_bytes(caption)
    (src / "notes.txt").write_text("a caption without an image is not a sample")
    return src


def test_folder_ingest_keeps_every_good_image_and_counts_each_bad_one(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = ingest(folder, out, size=32, maxcount=2)
    assert summary.written == 5 and summary.shards == ["data-000000.tar", "data-000001.tar", "data-000002.tar"]
    assert summary.skipped == {"corrupt_image": 2, "missing_caption": 1, "bad_caption_encoding": 1,
                               "empty_caption": 1, "too_small": 1}
    found = _outputs(out)
    assert set(found) == {"a.png", "b.jpg", "sub/c.png", "d.png", "e.webp"}
    for name, sample in found.items():
        assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == np.uint8
        assert sample["caption"] == f"caption of {name}"  # whitespace normalised
    assert found["sub/c.png"]["meta"]["original_size"] == [48, 80]
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["written"] == 5 and report["skipped"] == summary.skipped
    assert {item["source"]: item["reason"] for item in report["skipped_sources"]} == {
        "corrupt.png": "corrupt_image", "truncated.jpg": "corrupt_image", "nocaption.png": "missing_caption",
        "latin1.png": "bad_caption_encoding", "blank.png": "empty_caption", "tiny.png": "too_small"}
    assert "ingest: 5 written in 3 shard(s), 6 skipped (" in summary.line()


def test_centre_crop_and_exact_copy_at_the_same_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    wide = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(wide).save(src / "w.png")
    (src / "w.txt").write_text("wide")
    ingest(src, tmp_path / "out", size=16)
    np.testing.assert_array_equal(_outputs(tmp_path / "out")["w.png"]["image"], wide[:, 4:20])


def _img2dataset_shard(path: Path, n: int) -> None:
    with ShardWriter(path.parent, prefix=path.stem.rsplit("-", 1)[0]) as writer:
        for i in range(n):
            writer.write({"__key__": f"{i:09d}", "jpg": _image_bytes(48, 40, fmt="JPEG"), "txt": f"photo {i}",
                          "json": json.dumps({"url": f"http://x/{i}.jpg", "caption": f"photo {i}"})})


def test_img2dataset_shards_survive_truncation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _img2dataset_shard(src / "00000-000000.tar", 4)
    _img2dataset_shard(src / "00001-000000.tar", 3)
    cut = src / "00001-000000.tar"
    with tarfile.open(cut) as tar:
        end = min(m.offset_data for m in tar.getmembers() if m.name.startswith("000000002.")) + 5
    cut.write_bytes(cut.read_bytes()[:end])
    summary = ingest(src, tmp_path / "out", size=16)
    assert summary.written == 6 and summary.skipped == {"truncated_tar": 1}
    found = _outputs(tmp_path / "out")
    assert set(found) == {f"00000-000000.tar/{i:09d}" for i in range(4)} | {
        f"00001-000000.tar/{i:09d}" for i in range(2)}
    assert found["00000-000000.tar/000000003"]["meta"]["original"]["url"] == "http://x/3.jpg"
    loader = make_loader(tmp_path / "out", batch_size=8, stage=StageSizes(16))
    assert sum(len(b["key"]) for b in loader) == 6 and loader.stats.total == 0


def test_bad_arguments_are_user_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ingest(tmp_path / "nowhere", tmp_path / "out", size=32)
    with pytest.raises(UserError, match="size"):
        ingest(folder, tmp_path / "out", size=8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ingest(folder, tmp_path / "file", size=32)
    ingest(folder, tmp_path / "out", size=32)
    with pytest.raises(UserError, match="already holds"):
        ingest(folder, tmp_path / "out", size=32)
    assert ingest(folder, tmp_path / "out", size=32, overwrite=True).written == 5


def test_output_inside_the_source_is_not_read_back(folder: Path) -> None:
    assert ingest(folder, folder / "shards", size=32).written == 5
    assert ingest(folder, folder / "shards", size=32, prefix="again").written == 5  # not 10
