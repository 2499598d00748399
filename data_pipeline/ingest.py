"""Ingest real captioned images into training shards.

Sources (both kinds may sit in one folder; everything is read in sorted order):

- a folder (searched recursively) of images (``.png .jpg .jpeg .webp .bmp``) with
  same-named UTF-8 captions beside them (``cat.jpg`` + ``cat.txt``);
- img2dataset-style shards (``*.tar`` with ``KEY.jpg``/``KEY.png`` + ``KEY.txt`` + ``KEY.json``),
  or SRC itself being one such ``.tar``.

Each image is EXIF-rotated, flattened onto white if it has transparency, converted to
RGB, centre-cropped to a square and resized (Lanczos) to ``size`` px; images whose short
side is under ``min_size`` (default: ``size``, so nothing is upsampled) are dropped.
Output samples are ``KEY.png``, ``KEY.txt`` and ``KEY.json`` (the source record: its
path, original size and, for shards, the original json), keys ``{prefix}-000000000``, ...

A bad sample never stops the run: it is skipped and counted by reason, and the counts
and the skipped sources go to ``OUT/ingest-report.json`` (written atomically).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import UserError
from cascade.fileio import atomic_write_bytes
from data_pipeline.shards import (
    ShardWriter, SkipStats, iter_samples, prepare_out_dir, sample_record,
)

FOLDER_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
REPORT_NAME = "ingest-report.json"
MAX_LISTED = 10_000  # skipped sources listed by name in the report (all are counted)


@dataclass
class IngestSummary:
    """What :func:`ingest` did. ``skipped`` counts samples by reason, plus damaged places in
    shards (``truncated_tar``, ``corrupt_tar_header``, ``unreadable_shard``)."""

    written: int
    shards: list[str]
    skipped: dict[str, int]
    report: str
    skipped_sources: list[dict[str, str]] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        stats = SkipStats().merge(self.skipped)
        return (f"ingest: {self.written} written in {len(self.shards)} shard(s), {stats.summary()}; "
                f"report {self.report}")


@dataclass
class _Source:
    name: str  # where the sample came from (relative path, or shard/key)
    image: bytes | None
    caption: bytes | None
    meta: dict[str, Any]
    error: str | None = None  # a reason to skip found while reading the source


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _iter_sources(src: Path, out: Path, stats: SkipStats) -> Iterator[_Source]:
    """Loose images of ``src`` and then the samples of its tar shards, in sorted order."""
    out = out.resolve()
    if src.is_file():
        files = [src]
        root = src.parent
    else:
        files = sorted(p for p in src.rglob("*") if p.is_file() and out not in p.resolve().parents)
        root = src
    for path in files:
        if path.suffix.lower() in FOLDER_IMAGE_EXTS and not path.name.startswith("."):
            caption_path = path.with_suffix(".txt")
            image = _read(path)
            caption = _read(caption_path) if caption_path.is_file() else None
            error = "unreadable_file" if image is None or (caption is None and caption_path.is_file()) else None
            yield _Source(str(path.relative_to(root)), image, caption, {}, error)
    for path in files:
        if path.suffix.lower() != ".tar" or path.name.startswith("."):
            continue
        for raw in iter_samples(path, stats):
            image = next((raw[e] for e in SHARD_IMAGE_EXTS if e in raw), None)
            try:
                meta = json.loads(raw["json"]) if "json" in raw else {}
            except ValueError:
                meta = {}
            name = f"{path.relative_to(root)}/{raw['__key__']}"
            yield _Source(name, image, raw.get("txt"), {"original": meta} if isinstance(meta, dict) else {})


def _caption(data: bytes | None, max_chars: int) -> str:
    """The cleaned caption, or raise _Skip with the reason."""
    if data is None:
        raise _Skip("missing_caption")
    try:
        text = " ".join(data.decode("utf-8-sig").split())
    except UnicodeDecodeError:
        raise _Skip("bad_caption_encoding") from None
    if not text:
        raise _Skip("empty_caption")
    if len(text) > max_chars:
        raise _Skip("caption_too_long")
    return text


def prepare_image(data: bytes | None, size: int, min_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode, orient, flatten to RGB, centre-crop and resize an image file's bytes.

    :return: (uint8 [size, size, 3] in 0..255, the original (width, height)).
    :raises _Skip: ``missing_image``, ``corrupt_image``, ``too_large`` or ``too_small``.
    """
    from PIL import Image, ImageOps

    if data is None:
        raise _Skip("missing_image")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = image.convert("RGB")
    except Image.DecompressionBombError:
        raise _Skip("too_large") from None
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, struct.error...
        raise _Skip("corrupt_image") from None
    width, height = image.size
    side = min(width, height)
    if side < min_size:
        raise _Skip("too_small")
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8), (width, height)


class _Skip(Exception):
    """A sample is dropped; the message is the reason."""


def ingest(src: str | Path, out: str | Path, *, size: int, min_size: int | None = None, maxcount: int = 1000,
           prefix: str = "data", max_caption_chars: int = 1000, overwrite: bool = False,
           progress: Callable[[int], None] | None = None) -> IngestSummary:
    """Turn a folder of captioned images and/or img2dataset shards into training shards.

    :param src: the source folder or ``.tar``.
    :param out: the folder for ``{prefix}-NNNNNN.tar`` and ``ingest-report.json``.
    :param size: side of the output images (>= 16).
    :param min_size: drop images whose short side is smaller (default ``size``).
    :param progress: called with 1 after each source sample (for a progress bar).
    """
    src_path, min_size = Path(src), size if min_size is None else min_size
    if not src_path.exists():
        raise UserError(f"source {src_path} does not exist")
    if size < 16 or min_size < 1 or maxcount < 1 or max_caption_chars < 1:
        raise UserError(f"bad ingest settings: size={size} (>= 16), min_size={min_size}, maxcount={maxcount}")
    out_dir = prepare_out_dir(out, prefix, overwrite=overwrite)
    stats, listed = SkipStats(), []
    with ShardWriter(out_dir, prefix=prefix, maxcount=maxcount) as writer:
        for source in _iter_sources(src_path, out_dir, stats):
            try:
                if source.error is not None:
                    raise _Skip(source.error)
                caption = _caption(source.caption, max_caption_chars)
                pixels, (width, height) = prepare_image(source.image, size, min_size)
            except _Skip as skip:
                stats.add(str(skip))
                if len(listed) < MAX_LISTED:
                    listed.append({"source": source.name, "reason": str(skip)})
            else:
                meta = {"source": source.name, "original_size": [width, height], **source.meta}
                writer.write(sample_record(f"{prefix}-{writer.count:09d}", caption=caption, image=pixels, meta=meta))
            if progress is not None:
                progress(1)
    report = out_dir / REPORT_NAME
    summary = IngestSummary(writer.count, [p.name for p in writer.shards], stats.as_dict(), str(report), listed)
    record = {"src": str(src_path), "size": size, "min_size": min_size, **asdict(summary)}
    atomic_write_bytes(report, json.dumps(record, indent=1).encode("utf-8"))
    return summary
