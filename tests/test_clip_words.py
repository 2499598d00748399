"""Teaching a world CLIP the clip-only words: which tokens, what changes, what must not, and that it learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade.text import load_text_encoder
from cascade.training.clip_words import (
    TAUGHT_FILE,
    WordTeacher,
    WordTeaching,
    clip_batch,
    clip_only_tokens,
    load_clip_folder,
    teach,
)
from stages.clip_world import CLIP_PRESETS, build_clip, clip_tokenizer, export_clip

TINY = CLIP_PRESETS["tiny"]
IMAGE_CAPTIONS = ["a small red glass cube to the left of a large yellow star in the desert at night",
                  "three large blue spheres over the ocean at sunset"]
CLIP_CAPTIONS = ["three glass spheres falling into the ocean at sunset",
                 "a red cube moving left in the desert during the day"]


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_clip(build_clip(TINY), TINY, tmp_path / "clip", dtype=torch.float32)


def test_the_clip_only_tokens_of_the_world_are_its_motion_words() -> None:
    tokenizer = clip_tokenizer(40)
    words = {tokenizer.decode([t]).strip() for t in clip_only_tokens(tokenizer, scenes=200)}
    assert words == {"falling", "rising", "moving", "standing", "still", "into"}


def test_only_the_taught_rows_change_the_encoding(tiny_folder: Path) -> None:
    model, tokenizer = load_clip_folder(tiny_folder)
    reference = model.encode_text(tokenizer(IMAGE_CAPTIONS + CLIP_CAPTIONS), normalize=True).detach()  # [4, E]
    teacher = WordTeacher(model, clip_only_tokens(tokenizer, scenes=200))
    with torch.no_grad():
        teacher.rows.add_(torch.randn_like(teacher.rows))
        taught = teacher.text_features(tokenizer(IMAGE_CAPTIONS + CLIP_CAPTIONS))
    torch.testing.assert_close(taught[:2], reference[:2], rtol=0, atol=0)  # no taught word: bit for bit
    assert (taught[2:] - reference[2:]).norm(dim=-1).min() > 1e-2


def test_teaching_learns_and_the_folder_loads_with_the_real_text_encoder(tiny_folder: Path, tmp_path: Path) -> None:
    settings = WordTeaching(steps=25, batch_size=8, frames=4, size=16, row_lr=3e-2, tower_lr=3e-3,
                            vocabulary_scenes=200)
    model, tokenizer = load_clip_folder(tiny_folder)
    teacher = WordTeacher(model, clip_only_tokens(tokenizer, scenes=200))
    batch = clip_batch(tokenizer, list(range(8)), "train", 16, 4, np.random.default_rng(0), drop_words=False)
    with torch.no_grad():
        before = float(teacher.loss(*batch)[0])
    report = teach(tiny_folder, tmp_path / "taught", settings, progress=False)
    assert json.loads((tmp_path / "taught" / TAUGHT_FILE).read_text())["token_ids"] == report["token_ids"]

    # The same fine-tune, repeated on one fixed batch, must lower its loss: the rows and the tower learn.
    optimizer = torch.optim.Adam([teacher.rows, *teacher.motion.parameters()], lr=3e-2)
    for _ in range(25):
        loss = teacher.loss(*batch)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(teacher.loss(*batch)[0]) < 0.8 * before

    original = load_text_encoder(f"clip:local-dir:{tiny_folder}")
    updated = load_text_encoder(f"clip:local-dir:{tmp_path / 'taught'}")
    same, new = original.encode(IMAGE_CAPTIONS), updated.encode(IMAGE_CAPTIONS)
    torch.testing.assert_close(new.tokens, same.tokens, rtol=0, atol=0)
    torch.testing.assert_close(new.pooled, same.pooled, rtol=0, atol=0)
    moved = updated.encode(CLIP_CAPTIONS).pooled - original.encode(CLIP_CAPTIONS).pooled
    assert moved.norm(dim=-1).min() > 0


def test_cli_refuses_to_overwrite_its_source_in_one_line(tiny_folder: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cascade.training.clip_words", "--clip", str(tiny_folder),
                             "--out", str(tiny_folder), "--steps", "1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["clip_words: error: --out must differ from --clip "
                                                  "(the source folder is read, never overwritten)"]
