"""Atomic writes: the file appears whole, with the usual permissions, or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from cascade.fileio import atomic_output, atomic_write_text


def test_outputs_get_the_umask_permissions_even_when_the_writer_recreates_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    expected = 0o666 & ~_current_umask()
    with atomic_output(tmp_path / "w.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    atomic_write_text(tmp_path / "t.txt", "hello\n")
    for name in ("w.safetensors", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "w.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "t.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "t.txt").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
