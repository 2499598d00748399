"""Environment faults: a full disk during a checkpoint or a batch job is one clear line, and what was
already written stays good and resumable."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CASCADE, ROOT, run_command, tiny_config

FULL_DISK_TRAINING = """
import errno, sys, torch
real_save, calls = torch.save, [0]
def save(obj, f, *args, **kwargs):  # the disk fills up after {limit} files
    calls[0] += 1
    if calls[0] > {limit}:
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from cascade.train_stage import main
sys.exit(main({argv!r}))
"""


def test_training_on_a_full_disk_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    from cascade.text.testing import build_tiny_open_clip

    shards = tmp_path / "shards"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "16", "--count", "12", "--out", str(shards)], ROOT)
    config = tiny_config(tmp_path / "c.yaml", "tiny-base16", shards, build_tiny_open_clip(tmp_path / "clip"))
    run = tmp_path / "run"
    argv = ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "6"]
    # A DeepSpeed checkpoint is two torch.save files: the first checkpoint (step 2) fits, the second does not.
    result = subprocess.run([sys.executable, "-c", FULL_DISK_TRAINING.format(limit=2, argv=argv)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "No space left on device" in error and "step-00000004" in error, error
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    resumed = run_command([sys.executable, str(ROOT / "cascade" / "train_stage.py"), *argv, "--resume"], ROOT)
    assert "trained base to step 6" in resumed.stdout


def test_a_batch_job_on_a_full_disk_stops_cleanly_and_resumes(tiny_cascade: Path, tmp_path: Path, capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import cascade.fileio as fileio
    from cascade.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue ball\na green star\n")
    args = ["batch", "--prompts", str(prompts), "--checkpoint", str(tiny_cascade), "--per-prompt", "2",
            "--batch-size", "2", "--size", "16"]
    assert main(args + ["--out", str(tmp_path / "reference")]) == 0
    real, calls = fileio.fsync_and_replace, [0]

    def replace(tmp, final):  # the disk fills up after three files
        calls[0] += 1
        if calls[0] > 4:  # job.json + three outputs
            raise OSError(errno.ENOSPC, "No space left on device", str(final))
        return real(tmp, final)

    capsys.readouterr()
    monkeypatch.setattr(fileio, "fsync_and_replace", replace)
    out = tmp_path / "job"
    assert main(args + ["--out", str(out)]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and "No space left on device" in error[0]
    written = sorted(p.name for p in (out / "outputs").iterdir())
    assert len(written) == 3 and not [p for p in out.rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr(fileio, "fsync_and_replace", real)
    assert main(args + ["--out", str(out)]) == 0
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference" / "outputs").iterdir()}
    assert {p.name: p.read_bytes() for p in (out / "outputs").iterdir()} == reference
