"""Every shipped training config loads into a valid TrainConfig, and the default video recipe is the one
docs/training.md describes: the change from the given first frame, started from the shipped base."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.training.runner import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs" / "shapes").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shapes_config_loads(path: Path) -> None:
    stage = path.stem.split("-")[0]  # base-words.yaml trains the base, video64-gpu.yaml the video stage
    config = load_train_config(stage, path)
    assert config.max_steps >= 1 and config.data.batch_size >= 1


def test_the_default_video_recipe_diffuses_the_change_from_the_shipped_base() -> None:
    config = load_train_config("video64", None)
    assert config.stage.frames == 8 and config.stage.first_frame_residual_scale == pytest.approx(0.33)
    assert config.stage.unet.first_frame_conditioning and not config.data.image_fraction
    assert config.init_from == "weights/shapes/base64"
    gpu = load_train_config("video64", CONFIGS[0].parent / "video64-residual-gpu.yaml")
    assert gpu.stage == config.stage and gpu.data.batch_size == 4 * config.data.batch_size
