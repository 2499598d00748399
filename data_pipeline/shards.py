"""Webdataset shards: an atomic writer, sample encoding, shard listing and a robust reader.

Shard format (what every ``cascade data`` command writes and the training loader reads)
-----------------------------------------------------------------------------------------
A shard is a plain POSIX tar named ``DIR/{prefix}-{index:06d}.tar``. A sample is the run
of consecutive members that share a key (the member name up to the first dot of its
base name, as in webdataset); its members, by extension:

- ``png``: the image, 8-bit RGB (``jpg``/``jpeg``/``webp`` are read too);
- ``clip.png``: a clip instead of an image: its F square frames side by side in one
  RGB strip of shape [H, F*H, 3] (so F = width / height; nothing else is needed);
- ``txt``: the caption, UTF-8;
- ``json``: metadata (the scene for the shapes world, the source record for ingest);
- ``emb.safetensors``: an optional precomputed text embedding (safetensors, never pickle).

Reading never stops on a bad shard: a truncated member, a corrupt tar header or a shard
that cannot be opened is skipped and counted in a :class:`SkipStats` under a reason.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from cascade.fileio import fsync_and_replace

#: Shard file names: ``{prefix}-{index:06d}.tar``.
SHARD_NAME = "{prefix}-{index:06d}.tar"
#: Reasons counted by :func:`iter_samples` (events, one per damaged place in a shard).
TAR_REASONS = ("unreadable_shard", "truncated_tar", "corrupt_tar_header", "pipe_error")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)[.]([^/]*)$")  # webdataset's base_plus_ext, no dot-files
_BLOCK = 512


@dataclass
class SkipStats:
    """Counts of skipped samples (and damaged places in shards), by reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def merge(self, other: "SkipStats | Mapping[str, int]") -> "SkipStats":
        self.counts.update(other.counts if isinstance(other, SkipStats) else other)
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        """``"3 skipped (corrupt_image 2, missing_caption 1)"`` or ``"0 skipped"``."""
        parts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        return f"{self.total} skipped" + (f" ({parts})" if parts else "")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an image ``uint8 [H, W, 3]`` (values 0..255) as PNG."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def clip_strip(frames: np.ndarray) -> np.ndarray:
    """Frames ``uint8 [F, H, H, 3]`` -> one strip ``uint8 [H, F*H, 3]`` (frame f at columns f*H..)."""
    if frames.ndim != 4 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"expected square frames [F, H, H, 3], got {tuple(frames.shape)}")
    return np.ascontiguousarray(np.concatenate(list(frames), axis=1))


def unstrip_clip(strip: np.ndarray) -> np.ndarray:
    """Inverse of :func:`clip_strip`: ``[H, F*H, C]`` -> ``[F, H, H, C]``."""
    height, width = strip.shape[:2]
    if height == 0 or width % height:
        raise ValueError(f"a clip strip must be F square frames wide, got {height}x{width}")
    return np.stack(np.split(strip, width // height, axis=1))


def sample_record(key: str, *, caption: str, image: np.ndarray | None = None,
                  frames: np.ndarray | None = None, meta: Any = None) -> dict[str, Any]:
    """A shard sample: ``KEY.png`` (or ``KEY.clip.png``), ``KEY.txt``, ``KEY.json``.

    ``image`` is uint8 [H, W, 3]; ``frames`` uint8 [F, H, H, 3]; ``meta`` a JSON string or
    a JSON-serialisable object. Keys must not contain dots or slashes.
    """
    if "." in key or "/" in key:
        raise ValueError(f"a sample key cannot contain '.' or '/': {key!r}")
    record: dict[str, Any] = {"__key__": key, "txt": caption.encode("utf-8")}
    if (image is None) == (frames is None):
        raise ValueError("give exactly one of image or frames")
    if image is not None:
        record["png"] = png_bytes(image)
    else:
        record["clip.png"] = png_bytes(clip_strip(frames))
    if meta is not None:
        record["json"] = (meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True)).encode("utf-8")
    return record


class ShardWriter:
    """Write samples into ``DIR/{prefix}-NNNNNN.tar``, at most ``maxcount`` samples per shard.

    Each shard is written to a hidden temporary name and renamed into place when it is
    closed, so a shard file either is complete or does not exist. Member bytes are
    deterministic (fixed mtime, owner and mode): the same samples give the same shards.
    Use as a context manager; on an exception the unfinished shard is discarded.
    """

    def __init__(self, out_dir: str | Path, *, prefix: str = "data", maxcount: int = 1000,
                 maxsize: int | None = None, start_index: int = 0) -> None:
        if maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {maxcount}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.maxcount, self.maxsize = prefix, maxcount, maxsize
        self.index = start_index  # number of the next shard
        self.shards: list[Path] = []  # finished shards, in order
        self.count = 0  # samples written in all finished and open shards
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._in_shard = self._bytes = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample: ``{"__key__": str, ext: bytes | str, ...}``."""
        key = sample["__key__"]
        members = [(ext, value.encode("utf-8") if isinstance(value, str) else bytes(value))
                   for ext, value in sample.items() if not ext.startswith("__")]
        size = sum(len(data) for _, data in members)
        if self._tar is not None and (self._in_shard >= self.maxcount
                                      or (self.maxsize is not None and self._bytes + size > self.maxsize)):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self._bytes += size
        self.count += 1

    def close(self) -> list[Path]:
        """Finish the open shard; returns all shards written."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the unfinished shard (finished shards stay)."""
        if self._tar is not None:
            self._tar.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tar, self._tmp = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.abort() if exc_type is not None else self.close()

    def _open(self) -> None:
        final = self.out_dir / SHARD_NAME.format(prefix=self.prefix, index=self.index)
        self._tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self._in_shard = self._bytes = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        final = self.out_dir / SHARD_NAME.format(prefix=self.prefix, index=self.index)
        fsync_and_replace(self._tmp, final)
        self.shards.append(final)
        self._tar, self._tmp = None, None
        self.index += 1


def prepare_out_dir(out_dir: str | Path, prefix: str, *, overwrite: bool = False) -> Path:
    """Check and create an output folder for shards named ``{prefix}-*.tar``.

    Raises :class:`~cascade.errors.UserError` if ``out_dir`` is a file, or if it already
    holds such shards and ``overwrite`` is false (with ``overwrite`` they are deleted, so
    no stale shard of an earlier, longer run survives).
    """
    from cascade.errors import UserError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise UserError(f"bad shard prefix {prefix!r} (use letters, digits, '_' and '-')")
    existing = sorted(out.glob(f"{glob.escape(prefix)}-[0-9]*.tar")) if out.is_dir() else []
    if existing and not overwrite:
        raise UserError(f"{out} already holds {len(existing)} shard(s) named {prefix}-*.tar "
                        "(pass --overwrite or choose another --out)")
    for path in existing:
        path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror}") from None
    return out


def list_shards(source: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard URLs from a folder (its ``*.tar``, sorted), a file, a glob, a brace pattern
    (``shards-{000000..000009}.tar``), a ``pipe:`` command, or a list of any of these."""
    if not isinstance(source, (str, Path)):
        return [url for item in source for url in list_shards(item)]
    text = str(source)
    if text.startswith("pipe:"):
        return [text]
    text = text.removeprefix("file:")
    if os.path.isdir(text):
        return sorted(str(p) for p in Path(text).glob("*.tar") if not p.name.startswith("."))
    if "{" in text:
        import braceexpand  # a dependency of webdataset

        return [url for part in braceexpand.braceexpand(text) for url in list_shards(part)]
    if any(ch in text for ch in "*?["):
        return sorted(p for p in glob.glob(text) if not os.path.basename(p).startswith("."))
    return [text]


class _Truncated(Exception):
    """The stream ended inside a header or a member; ``args[0]``: the member's name, if known."""


def _header_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


def _header_size(field_bytes: bytes) -> int:
    if field_bytes[0] & 0x80:  # GNU base-256
        return int.from_bytes(bytes([field_bytes[0] & 0x7F]) + field_bytes[1:], "big")
    return int(field_bytes.replace(b"\0", b" ").strip() or b"0", 8)


def _tar_members(stream: IO[bytes], stats: SkipStats) -> Iterator[tuple[str, bytes]]:
    """Regular-file members ``(name, data)`` of an uncompressed tar stream.

    ``stream`` must be a buffered reader (``read(n)`` returns n bytes unless at the end).

    A header with a bad checksum is counted (``corrupt_tar_header``) and the reader scans
    forward, block by block, to the next valid header. Raises :class:`_Truncated` when
    the stream ends inside a header or a member.
    """
    long_name: str | None = None
    while True:
        block = stream.read(_BLOCK)
        if not block or block == bytes(_BLOCK):
            return  # end of archive (or a cut exactly between members)
        if len(block) < _BLOCK:
            raise _Truncated(None)
        if not _header_ok(block):
            stats.add("corrupt_tar_header")
            while not _header_ok(block):
                block = stream.read(_BLOCK)
                if len(block) < _BLOCK or block == bytes(_BLOCK):
                    return
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if block[257:262] == b"ustar" and block[345] != 0:
            name = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        size, kind = _header_size(block[124:136]), block[156:157]
        name = long_name or name
        data = stream.read(size)
        if len(data) < size:
            raise _Truncated(name)
        stream.read(-size % _BLOCK)
        if kind == b"x":  # pax header: "LEN key=value\n" records
            long_name = _pax_path(data) or None
        elif kind == b"L":  # GNU long name
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        else:
            long_name = None
            if kind in (b"0", b"\0", b"7"):
                yield name, data


def _pax_path(data: bytes) -> str:
    path, pos = "", 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "replace")
        pos += length
    return path


def open_stream(url: str | Path) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    """Open a local path (optionally ``file:``) or a ``pipe:COMMAND`` for reading."""
    url = str(url)
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
        assert proc.stdout is not None
        return proc.stdout, proc
    return open(url.removeprefix("file:"), "rb", buffering=1 << 20), None


def split_key(name: str) -> tuple[str, str] | None:
    """``"dir/000012.clip.png"`` -> ``("dir/000012", "clip.png")``; None for names without a dot."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def iter_samples(url: str | Path, stats: SkipStats) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, in tar order: ``{"__key__", "__url__", "__index__", ext: bytes}``.

    ``__index__`` counts samples from 0 within the shard. Damage is counted in ``stats``:
    ``unreadable_shard`` (cannot be opened), ``pipe_error`` (a ``pipe:`` command failed),
    ``corrupt_tar_header`` (one per resynchronisation) and ``truncated_tar`` (the shard
    ends inside a member; the sample that member belongs to is dropped, and a sample
    whose members were all read whole is still yielded). Never raises on bad data.
    """
    url = str(url)
    try:
        stream, proc = open_stream(url)
    except OSError:
        stats.add("unreadable_shard")
        return
    current: dict[str, Any] | None = None
    index, finished = 0, False
    try:
        try:
            for name, data in _tar_members(stream, stats):
                parts = split_key(name)
                if parts is None:
                    continue
                key, ext = parts
                if current is not None and current["__key__"] != key:
                    yield current
                    current, index = None, index + 1
                if current is None:
                    current = {"__key__": key, "__url__": url, "__index__": index}
                current[ext] = data
        except _Truncated as cut:
            stats.add("truncated_tar")
            parts = split_key(cut.args[0]) if cut.args[0] else None
            if current is not None and parts is not None and parts[0] == current["__key__"]:
                current = None  # the member that was cut belongs to this sample
        except ValueError:  # a header that passed its checksum but holds garbage numbers
            stats.add("corrupt_tar_header")
            current = None
        except OSError:
            stats.add("unreadable_shard")
            current = None
        finished = True
        if current is not None:
            yield current
    finally:
        if proc is not None and not finished:
            proc.kill()  # the consumer stopped early: not the command's fault
        stream.close()
        if proc is not None and proc.wait() != 0 and finished:
            stats.add("pipe_error")
