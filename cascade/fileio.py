"""Atomic writes: a file appears whole under its final name, or not at all.

Everything the project writes (checkpoints, shards, images, manifests, reports) goes through a
hidden temporary file in the same folder, flushed to disk and renamed into place, so that a
process killed at any moment never leaves a half-written file under a real name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_and_replace(tmp: Path | str, final: Path | str) -> None:
    """Flush ``tmp`` to disk, then rename it to ``final`` (atomic within one filesystem)."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes 0600, and writers that recreate the file (safetensors) keep that: give the
        # file the usual permissions before it takes its name.
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
