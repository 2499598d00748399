"""An overfit check: a small base stage trained on 8 world scenes regenerates them recognisably.

Trained through the user-facing command on 8 scenes for a few hundred steps, then sampled from
their captions and read back with the world reader. If this fails, "my samples are pure noise" is
a bug, not a lack of training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import CASCADE, ROOT, TRAIN, run_command

CONFIG = """stage:
  name: overfit
  resolution: 32
  text_drop_prob: 0.0
  unet:
    base_channels: 32
    channel_mults: [1, 2, 2]
    res_blocks: [1, 1, 1]
    attention_levels: [false, true, true]
    head_dim: 32
    text_dim: 32
    pooled_dim: 16
    context_dim: 64
data:
  shards: {shards}
  world_split: null
  batch_size: 8
  num_workers: 0
  shuffle_buffer: 8
optim: {{lr: 1.0e-3, warmup_steps: 20}}
text_encoder: clip:local-dir:{clip}
checkpoint_every: 1000
sample_every: 1000
log_every: 50
ema_decay: 0.95
"""


def test_a_base_stage_overfits_eight_scenes(tmp_path: Path) -> None:
    from cascade.release import load_stage
    from cascade.sampling import sample
    from cascade.text import load_text_encoder
    from cascade.text.testing import build_tiny_open_clip
    from data_pipeline.shards import SkipStats, iter_samples, list_shards
    from data_pipeline.world import read_image, sample_scene, score_reading
    from stages.conditioning import Conditioning

    shards = tmp_path / "shards"
    run_command(CASCADE + ["data", "world", "--split", "eval", "--size", "32", "--count", "8", "--out", str(shards)], ROOT)
    clip = build_tiny_open_clip(tmp_path / "clip", context_length=40)
    config = tmp_path / "overfit.yaml"
    config.write_text(CONFIG.format(shards=shards, clip=clip))
    run_command(TRAIN + ["--stage", "base", "--config", str(config), "--out", str(tmp_path / "run"), "--max-steps", "300"],
                ROOT, timeout=1800)
    run_command(CASCADE + ["export", str(tmp_path / "run"), "--out", str(tmp_path / "release"), "--dtype", "fp32"], ROOT)

    stage = load_stage(tmp_path / "release")
    captions = {r["__key__"]: r["txt"].decode() for u in list_shards(shards) for r in iter_samples(u, SkipStats())}
    scenes = [sample_scene("eval", seed) for seed in range(8)]
    embedding = load_text_encoder(f"clip:local-dir:{clip}").encode([captions[f"eval-{s:09d}"] for s in range(8)])
    cond = Conditioning(text_tokens=embedding.tokens, text_mask=embedding.mask, pooled=embedding.pooled)
    with torch.inference_mode():
        noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        images = sample("ddim", stage.denoiser(cond, threshold="dynamic"), noise, stage.schedule, 50)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    scores = [score_reading(read_image(p), s) for p, s in zip(pixels, scenes)]
    accuracy = {k: np.mean([s[k] for s in scores if s[k] is not None]) for k in ("time", "ground", "colour")}
    assert accuracy["time"] >= 0.75 and accuracy["ground"] >= 0.75, accuracy
    assert accuracy["colour"] >= 0.375, accuracy  # 8 colours: chance is 0.125
