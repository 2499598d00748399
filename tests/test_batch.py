"""``cascade batch``: outputs, manifest, bad lines, resume after SIGKILL, ranks and batch sizes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CASCADE, ROOT, run_command

PROMPTS = [
    "a red sphere on the grass during the day",
    "three glass cubes over the ocean at sunset",
    "a small blue star in the sky at night",
    "two yellow pyramids in the desert during the day",
    "a green box to the left of a white ball on the grass at sunset",
]


@pytest.fixture()
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def batch(release: Path, prompts: Path, out: Path, *extra: str, launcher: list[str] | None = None):
    command = (launcher or CASCADE) + ["batch", "--prompts", str(prompts), "--out", str(out),
                                       "--checkpoint", str(release), "--per-prompt", "2", *extra]
    return run_command(command, ROOT)


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "outputs").iterdir())}


def test_outputs_and_manifest(tiny_cascade: Path, prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    result = batch(tiny_cascade, prompt_file, out, "--batch-size", "3")
    assert "done 10, skipped as already done 0, failed 0" in result.stdout
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["index"]) for r in rows] == [(f"line-{n}", i) for n in range(1, 6) for i in range(2)]
    import hashlib

    for row in rows:
        assert row["prompt"] == PROMPTS[int(row["id"].split("-")[1]) - 1]
        assert hashlib.sha256((out / row["file"]).read_bytes()).hexdigest() == row["sha256"]
        assert {"seed", "size", "sampler", "steps", "guidance"} <= set(row)
    assert len({r["seed"] for r in rows}) == 10
    again = batch(tiny_cascade, prompt_file, out, "--batch-size", "3")
    assert "done 0, skipped as already done 10" in again.stdout


def test_bad_lines_are_reported_and_the_rest_runs(tiny_cascade: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"id": "../../escape", "prompt": "a red cube"}\n{bad json\n{"prompt": ""}\n'
                        b'{"prompt": "a cube", "colour": "red"}\n{"prompt": "a cube", "size": 48}\n\xff\xfe\n'
                        b'{"id": 5, "prompt": "a blue ball", "seed": 3}\n')
    out = tmp_path / "job"
    result = run_command(CASCADE + ["batch", "--prompts", str(prompts), "--out", str(out), "--checkpoint",
                                    str(tiny_cascade)], ROOT)
    for line, reason in ((2, "bad JSON"), (3, "empty prompt"), (4, "unknown field 'colour'"), (5, "size 48"), (6, "not UTF-8 text")):
        assert f"line {line}: skipped: {reason}" in result.stderr
    assert "done 2," in result.stdout
    written = sorted(p.resolve() for p in out.rglob("*.png"))
    assert len(written) == 2 and all(out.resolve() in p.parents for p in written)


def test_duplicate_ids_stop_before_any_work(tiny_cascade: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n')
    result = subprocess.run(CASCADE + ["batch", "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                                       "--checkpoint", str(tiny_cascade)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "duplicate id 'a' on lines 1 and 3" in result.stderr
    assert not (tmp_path / "o").exists()


def test_another_jobs_folder_is_refused_unless_forced(tiny_cascade: Path, prompt_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    batch(tiny_cascade, prompt_file, out, "--size", "16")
    other = subprocess.run(CASCADE + ["batch", "--prompts", str(prompt_file), "--out", str(out), "--checkpoint",
                                      str(tiny_cascade), "--seed", "9", "--size", "16"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode == 2 and "holds another job (different per_prompt, seed)" in other.stderr
    forced = run_command(CASCADE + ["batch", "--prompts", str(prompt_file), "--out", str(out), "--checkpoint",
                                    str(tiny_cascade), "--seed", "9", "--size", "16", "--force"], ROOT)
    assert "done 5," in forced.stdout


def test_killed_at_random_moments_ends_exactly_once_and_identical(tiny_cascade: Path, prompt_file: Path,
                                                                  tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    started = time.perf_counter()
    batch(tiny_cascade, prompt_file, reference, "--batch-size", "2")
    whole_job = time.perf_counter() - started  # kills land within it, however fast this machine is
    out = tmp_path / "killed"
    command = CASCADE + ["batch", "--prompts", str(prompt_file), "--out", str(out), "--checkpoint", str(tiny_cascade),
                         "--per-prompt", "2", "--batch-size", "2"]
    rng = random.Random(0)
    kills = 0
    for _ in range(12):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(rng.uniform(0.5, 1.0) * whole_job)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        elif "skipped as already done 10" in process.communicate()[0]:
            break
    assert kills >= 1
    final = batch(tiny_cascade, prompt_file, out, "--batch-size", "2")
    assert "failed 0" in final.stdout
    assert files(out) == files(reference)
    assert (out / "manifest.jsonl").read_text() == (reference / "manifest.jsonl").read_text()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_two_ranks_make_the_same_files_as_one(tiny_cascade: Path, prompt_file: Path, tmp_path: Path) -> None:
    from test_training import free_port

    one, two = tmp_path / "one", tmp_path / "two"
    batch(tiny_cascade, prompt_file, one, "--batch-size", "2", "--format", "webdataset")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "cascade"]
    batch(tiny_cascade, prompt_file, two, "--batch-size", "2", "--format", "webdataset", launcher=torchrun)
    assert files(one) == files(two)
    assert (one / "manifest.jsonl").read_text() == (two / "manifest.jsonl").read_text()
    assert (one / "shards" / "batch-000000.tar").read_bytes() == (two / "shards" / "batch-000000.tar").read_bytes()


def test_an_item_alone_equals_the_item_in_a_batch(tiny_cascade: Path, prompt_file: Path, tmp_path: Path) -> None:
    batch(tiny_cascade, prompt_file, tmp_path / "b1", "--batch-size", "1")
    batch(tiny_cascade, prompt_file, tmp_path / "b4", "--batch-size", "4")
    assert files(tmp_path / "b1") == files(tmp_path / "b4")
