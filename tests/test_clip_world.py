"""The world CLIP: its contrastive task learns, its export loads through the project's loaders and
gives the trained model's embeddings, world captions are redrawn from the right scene, and the
evaluations measure what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cascade.training.config import DataConfig, TrainConfig
from cascade.training.distributed import DistInfo
from stages.clip_world import CLIP_PRESETS, ClipContrastive, clip_tokenizer, export_clip, normalise_images

TINY = CLIP_PRESETS["tiny"]
PROMPTS = ["a red sphere on the grass during the day", "three glass cubes over the ocean at sunset", "two stars"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.world_shards import write_world_shards

    out = tmp_path_factory.mktemp("clip-world") / "shards"
    write_world_shards(out, "train", 48, 16, maxcount=24, progress=False)
    return out


def tiny_model(seed: int = 0) -> ClipContrastive:
    torch.manual_seed(seed)
    return ClipContrastive(TINY).eval()


def test_clip_task_loss_decreases_on_world_shards(shards: Path) -> None:
    from cascade.training.clip_task import ClipTask

    config = TrainConfig(clip=TINY, data=DataConfig(shards=str(shards), world_split=None, batch_size=16, num_workers=0))
    torch.manual_seed(0)
    task = ClipTask(config)
    batch = next(iter(task.make_loader(DistInfo(0, 1, 0))))
    kwargs = task.inputs(batch, torch.Generator().manual_seed(0), torch.float32)
    assert kwargs["image"].shape == (16, 3, 16, 16) and kwargs["text"].shape == (16, TINY.context_length)
    optimizer = torch.optim.AdamW(task.module.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = task.module(**kwargs)
        assert loss.shape == (1,)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < losses[-5], losses


def test_contrastive_loss_is_open_clips_symmetric_cross_entropy() -> None:
    model = tiny_model()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    text = clip_tokenizer(TINY.context_length)(PROMPTS + ["a black pyramid"])
    with torch.no_grad():
        loss = model(images, text)
        image_features = F.normalize(model.model.encode_image(normalise_images(images)), dim=-1)
        text_features = F.normalize(model.model.encode_text(text), dim=-1)
        logits = model.model.logit_scale.exp() * image_features @ text_features.T  # [4, 4]
        labels = torch.arange(4)
        expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(loss, expected.reshape(1), rtol=1e-5, atol=1e-6)


def test_export_round_trips_through_the_text_and_image_loaders(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cascade.clip_image import load_clip_image_encoder
    from cascade.text import load_text_encoder

    model = tiny_model(seed=3)
    folder = export_clip(model.model, TINY, tmp_path / "clip", dtype=torch.float32)
    assert load_file(str(folder / "open_clip_model.safetensors"))["logit_scale"].shape == ()  # open_clip's layout
    assert json.loads((folder / "open_clip_config.json").read_text())["model_cfg"] == TINY.model_cfg()
    encoder = load_text_encoder(f"clip:local-dir:{folder}")
    assert (encoder.dim, encoder.pooled_dim, encoder.max_length) == (TINY.text_width, TINY.embed_dim, TINY.context_length)
    with torch.no_grad():
        expected = model.model.encode_text(clip_tokenizer(TINY.context_length)(PROMPTS))  # [3, E]
    torch.testing.assert_close(encoder.encode(PROMPTS).pooled, expected, rtol=0, atol=1e-6)

    images = torch.rand(5, 3, 16, 16) * 2 - 1
    image_encoder = load_clip_image_encoder(folder)
    with torch.no_grad():
        want = F.normalize(model.model.encode_image(normalise_images(images)), dim=-1)
    torch.testing.assert_close(image_encoder.encode(images), want, rtol=0, atol=1e-6)
    assert image_encoder.embed_dim == TINY.embed_dim
    # larger inputs are resized to the tower's size first
    assert image_encoder.encode(torch.zeros(2, 3, 32, 32)).shape == (2, TINY.embed_dim)

    small = export_clip(model.model, TINY, tmp_path / "clip-bf16")  # bf16 weights: half the bytes
    ratio = (small / "open_clip_model.safetensors").stat().st_size / (folder / "open_clip_model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    pooled = load_text_encoder(f"clip:local-dir:{small}").encode(PROMPTS).pooled
    assert F.cosine_similarity(pooled, expected).min() > 0.999


def test_export_of_a_run_takes_the_ema_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from cascade.config import dump_yaml
    from cascade.text import load_text_encoder
    from cascade.training.clip_task import export_run

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000007"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("7\n")
    (run / "checkpoints" / "latest").write_text("step-00000007\n")
    (run / "config.yaml").write_text(dump_yaml(TrainConfig(clip=TINY)))
    ema = tiny_model(seed=5)  # stands for the averaged weights
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(step / "ema.safetensors"))
    folder = export_run(run, tmp_path / "out", dtype=torch.float32)
    with torch.no_grad():
        expected = ema.model.encode_text(clip_tokenizer(TINY.context_length)(PROMPTS))
    torch.testing.assert_close(load_text_encoder(f"clip:local-dir:{folder}").encode(PROMPTS).pooled, expected,
                               rtol=0, atol=1e-6)


def test_recaptioning_rebuilds_the_shard_scene(shards: Path) -> None:
    from cascade.training.world_captions import WorldRecaptioner
    from data_pipeline.shards import SkipStats, iter_samples
    from data_pipeline.world import Scene, parse_caption

    samples = list(iter_samples(next(iter(sorted(shards.glob("*.tar")))), SkipStats()))[:12]
    keys, captions = [s["__key__"] for s in samples], [s["txt"].decode() for s in samples]
    always = WorldRecaptioner(1.0)
    for sample, key in zip(samples, keys):
        assert always.scene(key) == Scene.from_json(sample["json"].decode())
    fresh = always(keys, captions, torch.Generator().manual_seed(0))
    assert fresh == always(keys, captions, torch.Generator().manual_seed(0))  # a function of the generator
    assert sum(a != b for a, b in zip(fresh, captions)) >= 6
    for text, sample in zip(fresh, samples):  # a fresh caption still describes the scene's first group
        parsed, scene = parse_caption(text), Scene.from_json(sample["json"].decode())
        assert parsed.groups[0].colour == scene.groups[0].colour
    assert WorldRecaptioner(0.0)(keys, captions, torch.Generator()) == captions
    assert WorldRecaptioner(1.0)(["k0001"], ["kept"], torch.Generator()) == ["kept"]  # not a world key


def test_retrieval_ranks_and_zero_shot_measure_what_they_say() -> None:
    from cascade.evaluation.clip_eval import retrieval_ranks, retrieval_summary, zero_shot_accuracy
    from cascade.evaluation.world_cases import ATTRIBUTES, scene_captions, world_scenes, zero_shot_cases

    x = F.normalize(torch.randn(200, 8), dim=-1)
    assert retrieval_ranks(x, x, 100).eq(1).all()  # each query is closest to itself
    worst = retrieval_ranks(-x, x, 100)  # the farthest image is the own one
    assert worst.eq(100).all() and retrieval_summary(worst, 100)["top1"] == 0.0

    scenes = world_scenes("eval", 12)
    compact = scene_captions(scenes, "compact")
    vocabulary: dict[str, int] = {}

    def oracle(captions: list[str]) -> torch.Tensor:  # one-hot per distinct caption
        ids = [vocabulary.setdefault(c, len(vocabulary)) for c in captions]
        return F.one_hot(torch.tensor(ids), 4096).float()

    images = oracle(compact)  # "image" i embeds its true compact caption
    for attribute in ATTRIBUTES:
        cases = zero_shot_cases(scenes, attribute)
        assert cases, attribute
        for case in cases:
            assert case.captions[case.answer] == compact[case.index]
            assert len(set(case.captions)) == len(case.captions)
            others = [c for i, c in enumerate(case.captions) if i != case.answer]
            assert all(len(set(c.split()) ^ set(compact[case.index].split())) <= 4 for c in others)
        result = zero_shot_accuracy(images, cases, oracle)
        assert result["accuracy"] == 1.0 and 0 < result["chance"] <= 0.5


def test_clip_evaluation_runs_on_a_tiny_clip(tmp_path: Path) -> None:
    from cascade.evaluation.clip_eval import evaluate_clip

    folder = export_clip(tiny_model().model, TINY, tmp_path / "clip", dtype=torch.float32)
    result = evaluate_clip(folder, "heldout", count=100, candidates=50, attributes=("colour", "time", "relation"))
    assert result["retrieval"]["queries"] == 100 and 1 <= result["retrieval"]["mean_rank"] <= 50
    assert 0.0 <= result["retrieval"]["top1"] <= 1.0
    for name, z in result["zero_shot"].items():
        assert 0.0 <= z["accuracy"] <= 1.0 and z["cases"] > 0, name


def test_hard_negative_term_is_the_pairwise_cross_entropy() -> None:
    """With a negative equal to the positive caption, the term is exactly w * log 2."""
    from dataclasses import replace

    torch.manual_seed(0)
    model = ClipContrastive(replace(TINY, hard_negative_weight=0.5)).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    text = clip_tokenizer(TINY.context_length)(PROMPTS)
    with torch.no_grad():
        plain = model(images, text)
        same = model(images, text, negative=text, has_negative=torch.ones(3, dtype=torch.bool))
        none = model(images, text, negative=text.flip(0), has_negative=torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(same - plain, torch.tensor([0.5 * math.log(2.0)]), rtol=1e-5, atol=1e-6)
    # Masked-out negatives add nothing, up to float32 rounding: they go through the text tower in the
    # same batch as the captions, and a larger matmul may sum in another order (4.8e-7 on a loss of
    # 2.7 on an AMD EPYC; exact on the AMX machines).
    torch.testing.assert_close(none, plain, rtol=1e-6, atol=1e-6)


def test_hard_negatives_change_one_attribute_in_the_same_phrasing() -> None:
    from cascade.training.world_captions import WorldRecaptioner
    from data_pipeline.world import caption, parse_caption, sample_scene

    keys = [f"train-{i:09d}" for i in range(40)]
    captions = [caption(sample_scene("train", i), seed=i, drop_words=True) for i in range(40)]
    fresh, negatives = WorldRecaptioner(0.5).with_negatives(keys, captions, torch.Generator().manual_seed(0))
    made = [(p, n) for p, n in zip(fresh, negatives) if n is not None]
    assert len(made) >= 30
    for positive, negative in made:
        a, b = parse_caption(positive), parse_caption(negative)
        assert (a.time, a.ground) == (b.time, b.ground) and a != b
        changed = sum(x != y for ga, gb in zip(a.groups, b.groups) for x, y in zip(ga.__dict__.values(), gb.__dict__.values()))
        assert changed + (a.relation != b.relation) in (1, 2), (positive, negative)  # one attribute, or a swap
