"""A base stage that reads the text encoder's word embeddings (``unet.text_word_dim``), end to end:
started from a release without them (the same network at first), trained, exported, rendered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import CASCADE, ROOT, TRAIN, retrained_base_cascade, run_command, tiny_config


@pytest.fixture(scope="module")
def words_cascade(tiny_cascade: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cascade with its base replaced by a word-reading base trained 3 steps from it."""
    return retrained_base_cascade(tiny_cascade, tmp_path_factory.mktemp("words"), "stage: {unet: {text_word_dim: 32}}\n")


def test_init_from_a_release_without_words_is_that_release(tiny_cascade: Path, tmp_path: Path) -> None:
    from cascade.release import load_stage
    from cascade.text import CachedTextEncoder, load_text_encoder
    from cascade.training.diffusion_task import DiffusionTask, text_conditioning
    from cascade.training.runner import load_train_config

    config = tiny_config(tmp_path / "base.yaml", "tiny-base16", tiny_cascade.parent / "shards", tiny_cascade / "clip",
                         extra=f"init_from: {tiny_cascade / 'base'}\nstage: {{unet: {{text_word_dim: 32}}}}\n")
    task = DiffusionTask(load_train_config("base", config))
    shipped = load_stage(tiny_cascade / "base")
    encoder = CachedTextEncoder(load_text_encoder(f"clip:local-dir:{tiny_cascade / 'clip'}"))
    cond = text_conditioning(encoder, ["a red cube on the grass", "two blue stars at night"], torch.float32)
    assert cond.text_words is not None and cond.text_words.shape[-1] == 32
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(task.module.network(x, t, cond), shipped.network(x, t, cond), rtol=0, atol=0)


def test_a_word_reading_base_trains_exports_and_renders(words_cascade: Path, tmp_path: Path) -> None:
    from cascade.release import load_stage

    stage = load_stage(words_cascade / "base")
    assert stage.config.unet.text_word_dim == 32 and stage.network.text_words is not None
    out = tmp_path / "words.png"
    run_command(CASCADE + ["render", "--checkpoint", str(words_cascade), "--prompt", "a red cube on the grass",
                           "--size", "16", "--out", str(out)], ROOT)
    assert out.stat().st_size > 0


def test_an_encoder_that_does_not_fit_the_stage_is_one_clear_error_at_load(words_cascade: Path, tmp_path: Path) -> None:
    from cascade.errors import UserError
    from cascade.pipeline import Cascade
    from cascade.text.testing import build_tiny_open_clip

    other = tmp_path / "release"
    shutil.copytree(words_cascade, other)
    shutil.rmtree(other / "clip")
    build_tiny_open_clip(other / "clip", width=48)
    with pytest.raises(UserError, match="expects text dims|word embeddings"):
        Cascade.load(other)


def test_a_resumed_run_does_not_need_the_release_it_started_from(tiny_cascade: Path, tmp_path: Path) -> None:
    """--resume takes every weight from the run's checkpoint: the init_from release may be gone."""
    start = tmp_path / "start"
    shutil.copytree(tiny_cascade / "base", start)
    config = tiny_config(tmp_path / "base.yaml", "tiny-base16", tiny_cascade.parent / "shards", tiny_cascade / "clip",
                         extra=f"init_from: {start}\nstage: {{unet: {{text_word_dim: 32}}}}\n")
    run = tmp_path / "run"
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "2"], ROOT)
    shutil.rmtree(start)
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(run), "--max-steps", "3", "--resume"], ROOT)
    assert (run / "checkpoints" / "step-00000003").is_dir()
