"""Shared fixtures: a tiny trained cascade, made once per test session through the user-facing commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Commands run in-process (``main([...])``) set launcher variables; keep them out of later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_command(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a project command in a subprocess (as a user would) and fail the test with its output on error."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


TRAIN = [sys.executable, str(ROOT / "cascade" / "train_stage.py")]
CASCADE = [sys.executable, "-m", "cascade"]


def tiny_config(path: Path, preset: str, shards: Path, clip: Path, extra: str = "") -> Path:
    path.write_text(
        f"""preset: {preset}
data:
  shards: {shards}
  world_split: null
  batch_size: 4
  num_workers: 0
text_encoder: clip:local-dir:{clip}
deepspeed: configs/deepspeed/zero2_bf16.json
checkpoint_every: 2
sample_every: 2
sample_steps: 3
log_every: 1
{extra}"""
    )
    return path


@pytest.fixture(scope="session")
def tiny_cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 -> 32 px cascade trained for a few steps on shapes-world shards, exported and assembled."""
    from cascade.text.testing import build_tiny_open_clip

    work = tmp_path_factory.mktemp("tiny-cascade")
    shards = work / "shards"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "32", "--count", "24", "--out", str(shards)], ROOT)
    clip = build_tiny_open_clip(work / "clip")
    release = work / "release"
    for stage, preset in (("base", "tiny-base16"), ("sr256", "tiny-sr32")):
        config = tiny_config(work / f"{stage}.yaml", preset, shards, clip)
        run_command(TRAIN + ["--stage", stage, "--config", str(config), "--out", str(work / f"run-{stage}"), "--max-steps", "3"], ROOT)
        only_ema = ["--ema-only"] if stage == "sr256" else []  # as the shipped releases are exported
        run_command(CASCADE + ["export", str(work / f"run-{stage}"), "--out", str(release / stage), *only_ema], ROOT)
    shutil.copytree(clip, release / "clip")
    (release / "cascade.yaml").write_text(
        "text_encoder: clip:local-dir:clip\nbase: base\nsuper_resolution: [sr256]\n"
        "defaults: {sampler: dpmpp-2m, steps: [4, 3], guidance: [2.0, 1.0]}\n"
    )
    return release


def retrained_base_cascade(tiny_cascade: Path, work: Path, stage_overrides: str, steps: int = 3) -> Path:
    """A copy of the tiny cascade under ``work`` whose base is another base trained ``steps`` steps
    from the tiny one (``init_from``) with ``stage_overrides`` (a YAML ``stage:`` line), then exported."""
    release = work / "release"
    shutil.copytree(tiny_cascade, release)
    config = tiny_config(work / "base.yaml", "tiny-base16", tiny_cascade.parent / "shards", release / "clip",
                         extra=f"init_from: {tiny_cascade / 'base'}\n{stage_overrides}")
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(work / "run"), "--max-steps", str(steps)], ROOT)
    shutil.rmtree(release / "base")
    run_command(CASCADE + ["export", str(work / "run"), "--out", str(release / "base")], ROOT)
    return release


@pytest.fixture(scope="session")
def tiny_video_cascade(tiny_cascade: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cascade plus a 4-frame video stage trained jointly on clips and images, started from
    the image base stage's weights."""
    work = tmp_path_factory.mktemp("tiny-video")
    clips = work / "clips"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "16", "--count", "16", "--clips",
                           "--frames", "4", "--out", str(clips)], ROOT)
    images = work / "images"
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "16", "--count", "16", "--out", str(images)], ROOT)
    release = work / "release"
    shutil.copytree(tiny_cascade, release)
    clip = release / "clip"
    config = tiny_config(work / "video.yaml", "tiny-video16", clips, clip,
                         extra=f"init_from: {release / 'base'}\n")
    text = config.read_text().replace("  num_workers: 0\n", f"  num_workers: 0\n  image_shards: {images}\n  image_fraction: 0.5\n")
    config.write_text(text)
    run_command(TRAIN + ["--stage", "video64", "--config", str(config), "--out", str(work / "run"), "--max-steps", "3"], ROOT)
    run_command(CASCADE + ["export", str(work / "run"), "--out", str(release / "video")], ROOT)
    with open(release / "cascade.yaml", "a") as f:
        f.write("video: video\n")
    return release


@pytest.fixture(scope="session")
def tiny_unclip_cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unCLIP path in miniature: a prior and a decoder conditioned on its CLIP image embeddings."""
    from cascade.text.testing import build_tiny_open_clip

    work = tmp_path_factory.mktemp("tiny-unclip")
    shards = work / "shards"  # 64 px: the prior embeds images at the CLIP's input size
    run_command(CASCADE + ["data", "world", "--split", "train", "--size", "64", "--count", "16", "--out", str(shards)], ROOT)
    clip = build_tiny_open_clip(work / "clip")  # text width 32, context 16, embeddings 16
    release = work / "release"
    prior = work / "prior.yaml"
    prior.write_text(
        "stage: {name: prior}\nprior: {embed_dim: 16, text_dim: 32, text_length: 16, width: 32, layers: 1, heads: 2}\n"
        + tiny_config(work / "unused.yaml", "tiny-base16", shards, clip).read_text().split("\n", 1)[1]
    )
    run_command(TRAIN + ["--stage", "prior", "--config", str(prior), "--out", str(work / "run-prior"), "--max-steps", "3"], ROOT)
    run_command([sys.executable, "-m", "cascade.training.prior_task", "--run", str(work / "run-prior"),
                 "--out", str(release / "prior")], ROOT)
    decoder = tiny_config(work / "decoder.yaml", "tiny-base16", shards, clip, extra="stage: {unet: {image_embed_dim: 16}}\n")
    run_command(TRAIN + ["--stage", "base", "--config", str(decoder), "--out", str(work / "run-decoder"), "--max-steps", "3"], ROOT)
    run_command(CASCADE + ["export", str(work / "run-decoder"), "--out", str(release / "decoder")], ROOT)
    shutil.copytree(clip, release / "clip")
    (release / "cascade.yaml").write_text(
        "text_encoder: clip:local-dir:clip\nprior: prior\nbase: decoder\n"
        "defaults: {sampler: ddim, steps: [4], guidance: [2.0], prior_steps: 4, prior_guidance: 1.5}\n"
    )
    return release
