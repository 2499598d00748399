"""How close the diffusion prior's sampled image embeddings come to the true ones, on a world split.

For each scene: its caption (a style drawn per scene, no dropped words), the CLIP embedding of its
render (the truth), the caption's CLIP text embedding (the baseline: use the text embedding as the
image embedding, what a decoder would get without a prior) and an embedding sampled from the
prior given the caption. Reported for the prior and the baseline:

- cosine similarity to the true image embedding (mean over scenes);
- retrieval rank of the true image among ``candidates`` (100) images of the split, ranked by
  cosine similarity to the sampled (or text) embedding: mean rank and top-1.

    python -m cascade.evaluation.prior_eval --prior weights/shapes/prior --split eval heldout \\
        --json benchmarks/results/prior_world.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cascade.evaluation.clip_eval import check_retrieval_count, retrieval_ranks, retrieval_summary
from cascade.evaluation.world_cases import render_scenes, scene_captions, world_scenes


def embedding_metrics(predicted: torch.Tensor, truth: torch.Tensor, candidates: int = 100) -> dict[str, float]:
    """Cosine similarity of ``predicted`` [N, E] to ``truth`` [N, E] (row by row) and the retrieval
    rank of each true embedding among its group of ``candidates``."""
    p, t = F.normalize(predicted.float(), dim=-1), F.normalize(truth.float(), dim=-1)
    cosine = (p * t).sum(dim=-1)  # [N]
    summary = retrieval_summary(retrieval_ranks(p, t, candidates), candidates)
    return {"cosine": float(cosine.mean()), "cosine_std": float(cosine.std()), **summary}


def sample_prior(prior: Any, text_encoder: Any, captions: list[str], *, steps: int, guidance: float,
                 sampler: str, best_of: int = 1, seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """Unit image embeddings [N, E] sampled from ``prior`` for ``captions`` (a generator per chunk)."""
    from stages.conditioning import Conditioning

    outs = []
    for start in range(0, len(captions), batch_size):
        emb = text_encoder.encode(captions[start:start + batch_size])
        cond = Conditioning(text_tokens=emb.tokens, text_mask=emb.mask, pooled=emb.pooled)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        outs.append(prior.sample(cond, len(emb), steps=steps, guidance=guidance, sampler=sampler,
                                 generator=generator, best_of=best_of))
    return torch.cat(outs)


def evaluate_prior(prior_dir: Path, split: str = "eval", count: int = 1000, *, candidates: int = 100,
                   steps: int = 16, guidances: tuple[float, ...] = (1.0,), sampler: str = "ddim",
                   best_of: tuple[int, ...] = (1,), clip_dir: Path | None = None) -> dict[str, Any]:
    """The prior in ``prior_dir`` (release or run folder) on scenes 0 .. count - 1 of ``split``."""
    check_retrieval_count(count, candidates)
    from cascade.clip_image import load_clip_image_encoder
    from cascade.text import load_text_encoder
    from cascade.training.prior_task import clip_folder_of, load_prior

    prior, spec = load_prior(prior_dir)
    clip = clip_dir if clip_dir is not None else clip_folder_of(spec)
    text_encoder = load_text_encoder(f"clip:local-dir:{clip}")
    image_encoder = load_clip_image_encoder(clip)
    scenes = world_scenes(split, count)
    captions = scene_captions(scenes)
    truth = image_encoder.encode(render_scenes(scenes, image_encoder.image_size))  # [N, E] unit
    text = torch.cat([text_encoder.encode(captions[i:i + 500]).pooled for i in range(0, count, 500)])  # [N, E]
    result: dict[str, Any] = {"split": split, "scenes": count, "prior": str(prior_dir), "clip": str(clip),
                              "sampler": sampler, "steps": steps,
                              "text_baseline": embedding_metrics(text, truth, candidates), "prior_by_guidance": {}}
    for guidance in guidances:
        for k in best_of:
            sampled = sample_prior(prior, text_encoder, captions, steps=steps, guidance=guidance, sampler=sampler,
                                   best_of=k)
            name = f"{guidance}" if k == 1 else f"{guidance}, best of {k}"
            result["prior_by_guidance"][name] = embedding_metrics(sampled, truth, candidates)
    return result


def print_report(result: dict[str, Any]) -> None:
    print(f"prior on {result['split']} ({result['scenes']} scenes; {result['sampler']}, {result['steps']} steps)")
    print(f"{'embedding':<32} {'cosine':>7} {'top-1/100':>10} {'mean rank':>10}")
    rows = [("text (baseline)", result["text_baseline"])]
    rows += [(f"prior, guidance {g}", m) for g, m in result["prior_by_guidance"].items()]
    for name, m in rows:
        print(f"{name:<32} {m['cosine']:>7.3f} {m['top1']:>10.3f} {m['mean_rank']:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.evaluation.prior_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", type=Path, default=Path("weights/shapes/prior"), help="release or run folder")
    parser.add_argument("--clip", type=Path, help="CLIP folder (default: the one the prior was trained with)")
    parser.add_argument("--split", nargs="+", default=["eval", "heldout"], help="world splits (default: eval heldout)")
    parser.add_argument("--count", type=int, default=1000, help="scenes per split (default 1000)")
    parser.add_argument("--steps", type=int, default=16, help="sampler steps (default 16)")
    parser.add_argument("--sampler", default="ddim", help="sampler name (default ddim)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales (default 1)")
    parser.add_argument("--best-of", type=int, nargs="+", default=[1],
                        help="draw k per caption, keep the closest to the text embedding (default 1)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from cascade.evaluation.report import evaluate_and_report
    from cascade.training.engine import resolve_path

    clip = resolve_path(str(args.clip)) if args.clip else None
    prior = resolve_path(str(args.prior))
    return evaluate_and_report(
        "prior_eval",
        lambda: [evaluate_prior(prior, split, args.count, steps=args.steps, guidances=tuple(args.guidance),
                                sampler=args.sampler, best_of=tuple(args.best_of), clip_dir=clip)
                 for split in args.split],
        print_report, args.json)


if __name__ == "__main__":
    sys.exit(main())
