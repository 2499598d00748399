"""Soak test: kill training and batch jobs with SIGKILL at random moments, rerun, and check that
nothing was lost or duplicated and that the end state equals an uninterrupted run's.

    .venv/bin/python benchmarks/soak.py [--kills 10] [--seed 0] [--out benchmarks/results/soak.json]

Training: a tiny base stage checkpointing every step (so kills often land inside a checkpoint
write) is killed --kills times and resumed; its losses and EMA weights must equal those of an
uninterrupted run, bit for bit. Batch: a batch job is killed --kills times and rerun; its files and
manifest must equal an uninterrupted job's, with no temporary files left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from common import RESULTS, machine, print_table, write_json  # noqa: E402
from conftest import CASCADE, TRAIN, run_command, tiny_config  # noqa: E402


def kill_loop(command: list[str], kills: int, rng: random.Random, window: tuple[float, float], done: callable) -> int:
    """Start ``command`` again and again, SIGKILLing it after a random delay, ``kills`` times (or until
    ``done()``); returns the number of kills."""
    killed = 0
    while killed < kills and not done():
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*window))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            killed += 1
        process.wait()
    return killed


def soak_training(work: Path, kills: int, rng: random.Random) -> dict:
    from safetensors.torch import load_file

    from cascade.text.testing import build_tiny_open_clip

    shards = work / "shards"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "16", "--count", "40", "--maxcount", "10",
                           "--out", str(shards)], ROOT)
    clip = build_tiny_open_clip(work / "clip")
    config = tiny_config(work / "soak.yaml", "tiny-base16", shards, clip, extra="checkpoint_every: 1\nsample_every: 1000\n")
    steps = 40
    reference = work / "reference"
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(reference), "--max-steps", str(steps)], ROOT)
    run = work / "killed"
    command = TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", str(steps)]

    def finished() -> bool:
        return (run / "checkpoints" / f"step-{steps:08d}" / "COMPLETE").is_file()

    killed = kill_loop(command, 1, rng, (8.0, 14.0), finished)  # the first run, killed once
    resume = command + ["--resume"]
    while killed < kills and not finished():
        if not (run / "checkpoints" / "latest").is_file():  # killed before its first checkpoint: start over
            shutil.rmtree(run, ignore_errors=True)
            killed += kill_loop(command, 1, rng, (8.0, 14.0), finished)
            continue
        killed += kill_loop(resume, 1, rng, (6.0, 12.0), finished)
    if not finished():
        run_command(resume if (run / "checkpoints" / "latest").is_file() else command, ROOT)
    losses = lambda path: [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    same_losses = [(r["step"], r["loss"]) for r in losses(run)] == [(r["step"], r["loss"]) for r in losses(reference)]
    a = load_file(str(reference / "checkpoints" / f"step-{steps:08d}" / "ema.safetensors"))
    b = load_file(str(run / "checkpoints" / f"step-{steps:08d}" / "ema.safetensors"))
    same_weights = set(a) == set(b) and all(bool((a[k] == b[k]).all()) for k in a)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    return {"kills": killed, "steps": steps, "same_losses": same_losses, "same_ema_weights": same_weights,
            "temporary_checkpoints_left": leftovers}


def soak_batch(work: Path, kills: int, rng: random.Random, cascade: Path) -> dict:
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(f"{n} red spheres on the grass at sunset" for n in ("one", "two", "three")) + "\n"
                       + "\n".join(f"a {c} cube in the desert at night" for c in ("blue", "green", "white", "black")) + "\n")
    args = ["batch", "--prompts", str(prompts), "--checkpoint", str(cascade), "--per-prompt", "3", "--batch-size", "2"]
    reference = work / "batch-reference"
    run_command(CASCADE + args + ["--out", str(reference)], ROOT)
    out = work / "batch-killed"
    command = CASCADE + args + ["--out", str(out)]

    def finished() -> bool:
        return (out / "manifest.jsonl").is_file() and len((out / "manifest.jsonl").read_text().splitlines()) == 21

    killed = 0
    while killed < kills:
        killed += kill_loop(command, 1, rng, (3.0, 9.0), lambda: False)
    run_command(command, ROOT)
    files = lambda folder: {p.name: p.read_bytes() for p in sorted((folder / "outputs").iterdir())}  # noqa: E731
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    keys = [(row["id"], row["index"]) for row in manifest]
    return {"kills": killed, "outputs": len(manifest), "exactly_once": len(keys) == len(set(keys)) == 21,
            "identical_files": files(out) == files(reference),
            "identical_manifest": (out / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes(),
            "temporary_files_left": [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name],
            "finished": finished()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="cascade-soak-") as tmp:
        work = Path(tmp)
        training = soak_training(work, args.kills, rng)
        from conftest import tiny_cascade

        class Factory:
            def mktemp(self, name: str) -> Path:
                path = work / name
                path.mkdir()
                return path

        cascade = tiny_cascade.__wrapped__(Factory())
        batch = soak_batch(work, args.kills, rng, cascade)
    print_table(["job", "kills survived", "end state equals an uninterrupted run", "left behind"], [
        ["training", training["kills"], training["same_losses"] and training["same_ema_weights"],
         len(training["temporary_checkpoints_left"])],
        ["batch", batch["kills"], batch["identical_files"] and batch["identical_manifest"] and batch["exactly_once"],
         len(batch["temporary_files_left"])],
    ])
    write_json(args.out, {"training": training, "batch": batch, "machine": machine()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
