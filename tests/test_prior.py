"""The diffusion prior: shapes, the null-text path and guidance, the embedding scaling, that it learns
a text -> embedding map, sampling through the core samplers, and training through the real trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cascade.sampling import sample
from stages.conditioning import Conditioning
from stages.prior import PriorConfig, PriorStage

E, D, L = 16, 32, 40
TINY = PriorConfig(embed_dim=E, text_dim=D, text_length=L, width=32, layers=2, heads=2)


def tiny_prior(seed: int = 0, **overrides) -> PriorStage:
    torch.manual_seed(seed)
    stage = PriorStage(PriorConfig(**{**TINY.__dict__, **overrides}))
    torch.nn.init.normal_(stage.network.out.weight, std=0.1)  # zero-initialised: make outputs depend on inputs
    torch.nn.init.normal_(stage.network.null_text, std=0.5)
    return stage.eval()


def text_cond(batch: int, length: int = 7, seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # [B, L]
    tokens = torch.randn(batch, length, D, generator=g) * mask[..., None]
    return Conditioning(text_tokens=tokens, text_mask=mask, pooled=torch.randn(batch, E, generator=g))


def test_loss_and_prediction_shapes_and_determinism() -> None:
    stage = tiny_prior()
    cond, x0 = text_cond(5), torch.randn(5, E)
    loss = stage(x0, cond, torch.Generator().manual_seed(3))
    assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss >= 0).all()
    torch.testing.assert_close(stage(x0, cond, torch.Generator().manual_seed(3)), loss, rtol=0, atol=0)
    out = stage.network(torch.randn(5, E), torch.full((5,), 500.0), cond)
    assert out.shape == (5, E)


def test_embeddings_are_diffused_as_scaled_unit_vectors() -> None:
    stage = tiny_prior()
    e = torch.randn(6, E) * 3.0
    z = stage.to_diffusion(e)
    torch.testing.assert_close(z.norm(dim=-1), torch.full((6,), math.sqrt(E)))  # mean square 1 per dimension
    torch.testing.assert_close(stage.from_diffusion(z), F.normalize(e, dim=-1))


def test_padding_does_not_change_the_prediction() -> None:
    stage = tiny_prior()
    cond = text_cond(3, length=6)
    padded = Conditioning(text_tokens=F.pad(cond.text_tokens, (0, 0, 0, 5), value=7.0),  # junk under the mask
                          text_mask=F.pad(cond.text_mask, (0, 5)), pooled=cond.pooled)
    x, t = torch.randn(3, E), torch.full((3,), 250.0)
    torch.testing.assert_close(stage.network(x, t, padded), stage.network(x, t, cond), rtol=1e-5, atol=1e-5)


def test_null_text_ignores_the_caption_and_guidance_extrapolates_from_it() -> None:
    stage = tiny_prior()
    a, b = text_cond(4, seed=1), text_cond(4, seed=2)
    x, t = torch.randn(4, E), torch.full((4,), 700.0)
    dropped = torch.ones(4, dtype=torch.bool)
    null_a = stage.network(x, t, Conditioning(**{**a.__dict__, "drop_text": dropped}))
    null_b = stage.network(x, t, Conditioning(**{**b.__dict__, "drop_text": dropped}))
    torch.testing.assert_close(null_a, null_b, rtol=0, atol=1e-6)  # no trace of the caption
    torch.testing.assert_close(null_a, stage.network(x, t, Conditioning()), rtol=0, atol=1e-6)  # = no caption at all
    assert (stage.network(x, t, a) - stage.network(x, t, b)).abs().max() > 1e-3  # with text, it matters

    s = torch.tensor([3.0], dtype=torch.float64)
    times = torch.full((4,), 600.0, dtype=torch.float64)
    conditional = stage.denoiser(a, 1.0)(x, times)
    unconditional = stage.denoiser(Conditioning(**{**a.__dict__, "drop_text": dropped}), 1.0)(x, times)
    guided = stage.denoiser(a, 3.0)(x, times)
    torch.testing.assert_close(guided, unconditional + s.float() * (conditional - unconditional), rtol=1e-4, atol=1e-5)


def test_text_dropout_rate_in_training() -> None:
    stage = tiny_prior()
    seen: list[torch.Tensor] = []
    stage.network.register_forward_pre_hook(lambda _m, args: seen.append(args[2].drop_text))
    stage(torch.randn(4000, E), text_cond(4000), torch.Generator().manual_seed(0))
    assert abs(seen[0].float().mean().item() - 0.1) < 0.02


def test_few_step_sampling_through_the_core_samplers() -> None:
    stage = tiny_prior()
    cond = text_cond(3)
    noise = torch.randn(3, E, generator=torch.Generator().manual_seed(0))
    for name in ("ddim", "dpmpp-2m", "ddpm"):
        z0 = sample(name, stage.denoiser(cond, 2.0), noise, stage.schedule, 6, generator=torch.Generator().manual_seed(1))
        assert z0.shape == (3, E) and torch.isfinite(z0).all()
    unit = stage.sample(cond, 3, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3))
    again = stage.sample(cond, 3, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(unit, again, rtol=0, atol=0)


def test_best_of_keeps_the_sample_closest_to_the_text() -> None:
    stage = tiny_prior()
    cond = text_cond(3)
    best = stage.sample(cond, 3, steps=3, best_of=4, generator=torch.Generator().manual_seed(5))
    repeated = Conditioning(**{k: v.repeat(4, *[1] * (v.ndim - 1)) for k, v in cond.__dict__.items() if v is not None})
    every = stage.sample(repeated, 12, steps=3, generator=torch.Generator().manual_seed(5)).reshape(4, 3, E)
    text = F.normalize(cond.pooled, dim=-1)
    scores = (every * text).sum(-1)  # [4, 3]
    torch.testing.assert_close(best, every[scores.argmax(0), torch.arange(3)], rtol=0, atol=0)


def test_prior_learns_a_caption_to_embedding_map() -> None:
    """Four captions, each with its own target embedding: after training, samples land on their targets."""
    torch.manual_seed(0)
    stage = PriorStage(TINY)
    cond = text_cond(4, seed=5)
    targets = F.normalize(torch.randn(4, E, generator=torch.Generator().manual_seed(6)), dim=-1)
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(7)
    batch = Conditioning(**{k: v.repeat(16, *[1] * (v.ndim - 1)) for k, v in cond.__dict__.items() if v is not None})
    for _ in range(250):
        loss = stage(targets.repeat(16, 1), batch, generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stage.eval()
    sampled = stage.sample(cond, 4, steps=8, guidance=1.0, generator=torch.Generator().manual_seed(8))
    cosine = (sampled * targets).sum(-1)
    assert cosine.min() > 0.9, cosine
    wrong = (sampled * targets.roll(1, dims=0)).sum(-1)
    assert (cosine - wrong).min() > 0.3  # each caption gets its own embedding, not the mean one


# ------------------------------------------------------------------------------ through the trainer


@pytest.fixture(scope="module")
def trained_prior(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import ROOT, TRAIN, run_command
    from data_pipeline.world_shards import write_world_shards
    from stages.clip_world import CLIP_PRESETS, ClipContrastive, export_clip

    work = tmp_path_factory.mktemp("prior")
    shards = work / "shards"
    write_world_shards(shards, "train", 24, 16, maxcount=12, progress=False)
    torch.manual_seed(0)
    clip = export_clip(ClipContrastive(CLIP_PRESETS["tiny"]).model, CLIP_PRESETS["tiny"], work / "clip")
    config = work / "prior.yaml"
    config.write_text(f"""stage: {{name: prior}}
prior: {{embed_dim: {E}, text_dim: {D}, text_length: {L}, width: 32, layers: 2, heads: 2, recaption_prob: 0.5}}
text_encoder: clip:local-dir:{clip}
data: {{shards: {shards}, world_split: null, batch_size: 4, num_workers: 0}}
checkpoint_every: 2
sample_every: 2
sample_steps: 3
sample_guidance: 2.0
log_every: 1
""")
    run = work / "run"
    run_command(TRAIN + ["--stage", "prior", "--config", str(config), "--out", str(run), "--max-steps", "4"], ROOT)
    return run, clip


def test_prior_trains_through_train_stage(trained_prior: tuple[Path, Path]) -> None:
    run, _ = trained_prior
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    snapshot = json.loads((run / "samples" / "step-00000004.json").read_text())
    assert -1.0 <= snapshot["cosine_prior"] <= 1.0 and -1.0 <= snapshot["cosine_text_baseline"] <= 1.0


def test_prior_export_and_evaluation(trained_prior: tuple[Path, Path], tmp_path: Path) -> None:
    from cascade.evaluation.prior_eval import evaluate_prior
    from cascade.training.prior_task import export_run, load_prior

    run, clip = trained_prior
    release = export_run(run, tmp_path / "prior", dtype="fp32")
    from_run, spec = load_prior(run)
    from_release, release_spec = load_prior(release)
    for (name, a), b in zip(from_run.state_dict().items(), from_release.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert spec == release_spec == f"clip:local-dir:{clip}" and from_release.config.embed_dim == E
    assert json.loads((release / "release.json").read_text())["step"] == 4
    small = export_run(run, tmp_path / "prior-bf16")  # bf16 by default: half the bytes
    assert (small / "ema.safetensors").stat().st_size < 0.6 * (release / "ema.safetensors").stat().st_size
    result = evaluate_prior(release, "heldout", count=40, candidates=20, steps=3, guidances=(1.0, 2.0))
    for metrics in [result["text_baseline"], *result["prior_by_guidance"].values()]:
        assert -1.0 <= metrics["cosine"] <= 1.0 and 1 <= metrics["mean_rank"] <= 20 and 0 <= metrics["top1"] <= 1
