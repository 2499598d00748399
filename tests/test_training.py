"""Training through the user-facing command: exact resume over two ranks with ZeRO-2, NaN stops,
early stops with a checkpoint (time limit, SIGTERM), and checkpoints that would run code are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CASCADE, ROOT, TRAIN, run_command, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from cascade.text.testing import build_tiny_open_clip

    work = tmp_path_factory.mktemp("training")
    shards = work / "shards"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "16", "--count", "40",
                           "--maxcount", "10", "--out", str(shards)], ROOT)
    clip = build_tiny_open_clip(work / "clip")
    return work, shards, clip


def losses(run: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), str(ROOT / "cascade" / "train_stage.py")]


def test_resume_equals_an_uninterrupted_run_on_two_ranks_with_zero2(setup) -> None:
    work, shards, clip = setup
    config = tiny_config(work / "zero2.yaml", "tiny-base16", shards, clip)
    whole, split = work / "whole", work / "split"
    run_command(torchrun(2) + ["--stage", "base", "--config", str(config), "--out", str(whole), "--max-steps", "6"], ROOT)
    run_command(torchrun(2) + ["--stage", "base", "--config", str(config), "--out", str(split), "--max-steps", "3"], ROOT)
    run_command(torchrun(2) + ["--stage", "base", "--config", str(config), "--out", str(split), "--max-steps", "6",
                               "--resume"], ROOT)
    assert [s for s, _ in losses(whole)] == list(range(1, 7))
    assert losses(split) == losses(whole)  # same losses, bit for bit
    a = load_file(str(whole / "checkpoints" / "step-00000006" / "ema.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-00000006" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "samples" / "step-00000006.png").is_file()


def test_deepspeed_launcher_trains_one_rank(setup) -> None:
    work, shards, clip = setup
    config = tiny_config(work / "ds.yaml", "tiny-base16", shards, clip)
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port())]
    run_command(launcher + [str(ROOT / "cascade" / "train_stage.py"), "--stage", "base", "--config", str(config),
                            "--out", str(work / "ds"), "--max-steps", "2"], ROOT)
    assert [s for s, _ in losses(work / "ds")] == [1, 2]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(setup) -> None:
    work, shards, clip = setup
    config = tiny_config(work / "nan.yaml", "tiny-base16", shards, clip,
                         extra="optim: {lr: 1.0e+30, warmup_steps: 1}\ncheckpoint_every: 1\n")
    run = work / "nan"
    result = subprocess.run(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "50"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "loss is not finite at step" in error and "last good checkpoint" in error
    step = int(error.split("at step ")[1].split(":")[0])
    kept = run / "checkpoints" / f"step-{step - 1:08d}"
    assert (kept / "COMPLETE").is_file() and not (run / "checkpoints" / f"step-{step:08d}").exists()


def test_max_minutes_stops_with_a_checkpoint_that_resume_continues(setup) -> None:
    work, shards, clip = setup
    config = tiny_config(work / "budget.yaml", "tiny-base16", shards, clip, extra="checkpoint_every: 1000\n")
    run = work / "budget"
    result = run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "50",
                                  "--max-minutes", "0.0001"], ROOT)
    assert "stopped early: time limit" in result.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000001"  # none periodic before step 1000
    assert [s for s, _ in losses(run)] == [1]
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "3",
                         "--resume"], ROOT)
    assert [s for s, _ in losses(run)] == [1, 2, 3]


def test_sigterm_stops_at_the_end_of_a_step_with_a_checkpoint(setup) -> None:
    import signal
    import time

    work, shards, clip = setup
    config = tiny_config(work / "term.yaml", "tiny-base16", shards, clip,
                         extra="checkpoint_every: 1000\nsample_every: 1000\n")
    run = work / "term"
    process = subprocess.Popen(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run),
                                        "--max-steps", "100000"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped early: SIGTERM" in stdout
    last = losses(run)[-1][0]
    assert last >= 2 and [s for s, _ in losses(run)] == list(range(1, last + 1))
    kept = run / "checkpoints" / f"step-{last:08d}"
    assert (kept / "COMPLETE").is_file() and (run / "checkpoints" / "latest").read_text().strip() == kept.name


class RunsCode:
    """A pickled object that would run a command when unpickled."""

    def __reduce__(self):
        return (subprocess.call, (["touch", "/tmp/cascade-pwned"],))


def test_a_checkpoint_holding_code_is_refused(setup, tmp_path: Path) -> None:
    work, shards, clip = setup
    config = tiny_config(work / "evil.yaml", "tiny-base16", shards, clip)
    run = tmp_path / "evil"
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "1"], ROOT)
    target = run / "checkpoints" / "step-00000001" / "mp_rank_00_model_states.pt"
    state = torch.load(target, weights_only=False)
    state["payload"] = RunsCode()
    torch.save(state, target)
    result = subprocess.run(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "2",
                                     "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "refusing checkpoint file" in result.stderr and "call)" in result.stderr  # names the refused global
    assert not Path("/tmp/cascade-pwned").exists()
    export = subprocess.run(CASCADE + ["export", str(run), "--out", str(tmp_path / "release")], cwd=ROOT,
                            capture_output=True, text=True)
    assert export.returncode == 2 and "refusing" in export.stderr
    shutil.rmtree(run)
