"""The durable state of a batch job: its settings, a journal of finished outputs, the manifest.

- ``job.json``: the settings that make outputs what they are; another job's folder is refused.
- ``.journal/*.jsonl``: one line per finished output, appended by each rank after the output's file
  was renamed into place (and flushed). A line torn by a kill is ignored, and its output redone.
- ``manifest.jsonl``: every finished output of the prompt file, in file order, rebuilt at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cascade.errors import UserError
from cascade.fileio import atomic_write_text

JOB_FILE = "job.json"
JOURNAL = ".journal"
MANIFEST = "manifest.jsonl"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_folder(out: Path, settings: dict[str, Any], force: bool) -> None:
    """Write ``job.json`` in a new folder, or check that the folder holds this very job."""
    path = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None
        if existing != settings:
            if not force:
                differing = sorted(k for k in set(settings) | set(existing or {})
                                   if (existing or {}).get(k) != settings.get(k))
                raise UserError(f"{out} holds another job (different {', '.join(differing) or 'settings'}); "
                                f"choose another --out or pass --force to replace it")
            clear_job(out)
    elif out.is_dir() and any(p.name not in (JOURNAL,) for p in out.iterdir()) and not force:
        raise UserError(f"{out} is not empty and holds no batch job; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def clear_job(out: Path) -> None:
    """Remove another job's journal, manifest and outputs (``--force``)."""
    import shutil

    for name in (JOURNAL, "outputs", "shards"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST, JOB_FILE):
        (out / name).unlink(missing_ok=True)


def remove_temporary_files(out: Path) -> int:
    """Delete the temp files a killed run left (``.NAME.*.tmp*``); returns how many."""
    count = 0
    for folder in (out, out / "outputs", out / "shards"):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)
                count += 1
    return count


def read_journal(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Finished outputs by (id, index), from every rank's journal; torn lines are skipped."""
    done: dict[tuple[str, int], dict[str, Any]] = {}
    folder = out / JOURNAL
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            try:
                row = json.loads(line)
                done[(row["id"], int(row["index"]))] = row
            except (ValueError, KeyError, TypeError):
                continue
    return done


class Journal:
    """This process's append-only journal file."""

    def __init__(self, out: Path, rank: int) -> None:
        folder = out / JOURNAL
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{rank:05d}-pid{os.getpid()}.jsonl"

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path, "ab") as f:
            f.write(b"".join(json.dumps(row, sort_keys=True).encode("utf-8") + b"\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())


def write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / MANIFEST, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
