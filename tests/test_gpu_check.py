"""benchmarks/gpu_check.sh: its dry run goes through every step on the CPU, and without a GPU the
real run stops with one clear line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_dry_run_goes_through_every_benchmark(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--dry", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    unet = json.loads((tmp_path / "unet_vs_diffusers.json").read_text())
    assert unet["dry"] and unet["device"] == "cpu"
    assert {r["model"] for r in unet["results"]} == {"ours", "diffusers"}
    assert all(r["forward_img_s"] > 0 and r["train_samples_s"] > 0 for r in unet["results"])
    render = json.loads((tmp_path / "render.json").read_text())
    assert render["image"]["total_seconds"] > 0 and render["image"]["stages"][0]["stage"] == "text encoder"
    # where the shipped release has no video stage, the clip is timed with the preset's, built from the base's weights
    from cascade.cascade_config import load_cascade_config

    shipped_video = load_cascade_config(ROOT / "weights" / "shapes").video is not None
    assert render["untrained_video"] == (None if shipped_video else "shapes-video64")
    assert render["clip"]["stages"][1]["stage"] == "base64 + video64"  # the base draws the first frame
    assert render["clip"]["total_seconds"] > 0 and all(r["peak_mib"] > 0 for r in render["clip"]["stages"])
    quality = json.loads((tmp_path / "samplers_quality.json").read_text())
    assert quality["dry"] and {p["sampler"] for p in quality["points"]} == {"ddpm", "dpmpp-2m"}
    assert all(0.0 <= p["all_correct"] <= 1.0 for p in quality["points"])
    train = json.loads((tmp_path / "train_step.json").read_text())
    assert train["preset"] == "tiny-video16" and set(train["best"]) == {"channels-last", "contiguous"}
    assert all(seconds > 0 for seconds in train["best"].values())
    assert "== render (dry)" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_real_run_says_so(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no CUDA GPU here: run with --dry on a CPU" in result.stderr
    assert "Traceback" not in result.stderr
