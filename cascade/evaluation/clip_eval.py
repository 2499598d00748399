"""How well the world CLIP matches captions and images, on a world split.

- Text-to-image retrieval: the split's scenes in consecutive groups of ``candidates`` (100); each
  caption ranks the images of its group by cosine similarity; top-1 (top-5) is the fraction whose
  own image comes first (in the first five). Chance: 1 / candidates.
- Zero-shot accuracy per attribute: each image is compared with captions that differ only in that
  attribute (:func:`cascade.evaluation.world_cases.zero_shot_cases`); accuracy is the fraction
  where its true caption scores highest. Chance: 1 / number of values.

    python -m cascade.evaluation.clip_eval --clip weights/shapes/clip --split eval --count 1000 \\
        --json benchmarks/results/clip_world.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cascade.evaluation.world_cases import (ATTRIBUTES, ZeroShotCase, render_scenes, scene_captions, world_scenes,
                                           zero_shot_cases)


def retrieval_ranks(queries: torch.Tensor, images: torch.Tensor, candidates: int = 100) -> torch.Tensor:
    """The rank (1 = first) of each query's own image among the ``candidates`` images of its group.

    :param queries: [N, E] and :param images: [N, E], row i of each belonging together (any norm:
        cosine similarity is used). Items past the last whole group are left out.
    :returns: int64 [G * candidates] ranks.
    """
    q, x = F.normalize(queries.float(), dim=-1), F.normalize(images.float(), dim=-1)
    groups = q.shape[0] // candidates
    if groups < 1:
        raise ValueError(f"need at least {candidates} items for retrieval among {candidates}, got {q.shape[0]}")
    ranks = []
    for g in range(groups):
        part = slice(g * candidates, (g + 1) * candidates)
        similarity = q[part] @ x[part].T  # [C, C]
        own = similarity.diagonal()[:, None]  # [C, 1]
        ranks.append(1 + (similarity > own).sum(dim=1))  # [C]
    return torch.cat(ranks)


def check_retrieval_count(count: int, candidates: int) -> None:
    """A user's ``--count`` must fill at least one group of retrieval candidates."""
    from cascade.errors import UserError

    if candidates < 2 or count < candidates:
        raise UserError(f"--count {count} is too small: retrieval ranks among {candidates} candidates needs at least "
                        f"{candidates} scenes")


def retrieval_summary(ranks: torch.Tensor, candidates: int) -> dict[str, float]:
    r = ranks.float()
    return {"top1": float((r == 1).float().mean()), "top5": float((r <= 5).float().mean()),
            "mean_rank": float(r.mean()), "median_rank": float(r.median()), "candidates": candidates,
            "chance_top1": 1.0 / candidates, "queries": int(r.numel())}


def zero_shot_accuracy(image_embeds: torch.Tensor, cases: list[ZeroShotCase], text_embed: Any) -> dict[str, float]:
    """Accuracy of picking each case's true caption for its image.

    :param image_embeds: [N, E] unit image embeddings (cases index into them).
    :param text_embed: ``list[str] -> [M, E]`` text embeddings.
    """
    if not cases:
        return {"accuracy": float("nan"), "chance": float("nan"), "cases": 0}
    captions = [c for case in cases for c in case.captions]
    texts = F.normalize(text_embed(captions).float(), dim=-1)  # [sum K, E]
    correct, chance, start = 0, 0.0, 0
    for case in cases:
        k = len(case.captions)
        scores = texts[start:start + k] @ image_embeds[case.index].float()  # [K]
        correct += int(scores.argmax()) == case.answer
        chance += 1.0 / k
        start += k
    return {"accuracy": correct / len(cases), "chance": chance / len(cases), "cases": len(cases)}


def text_embedder(encoder: Any, batch_size: int = 512) -> Any:
    """``list[str] -> [M, E]`` pooled embeddings of a :class:`cascade.text.TextEncoder`, in chunks."""

    def embed(captions: list[str]) -> torch.Tensor:
        return torch.cat([encoder.encode(captions[i:i + batch_size]).pooled for i in range(0, len(captions), batch_size)])

    return embed


def evaluate_clip(clip_dir: Path, split: str = "eval", count: int = 1000, candidates: int = 100,
                  attributes: tuple[str, ...] = ATTRIBUTES) -> dict[str, Any]:
    """Retrieval and zero-shot figures of the CLIP in ``clip_dir`` on scenes 0 .. count - 1 of ``split``."""
    check_retrieval_count(count, candidates)
    from cascade.clip_image import load_clip_image_encoder
    from cascade.text import load_text_encoder

    image_encoder = load_clip_image_encoder(clip_dir)
    embed_text = text_embedder(load_text_encoder(f"clip:local-dir:{clip_dir}"))
    scenes = world_scenes(split, count)
    images = image_encoder.encode(render_scenes(scenes, image_encoder.image_size))  # [N, E] unit
    result: dict[str, Any] = {"split": split, "scenes": count, "clip": str(clip_dir)}
    for name, style in (("retrieval", None), ("retrieval_compact", "compact")):
        ranks = retrieval_ranks(embed_text(scene_captions(scenes, style)), images, candidates)
        result[name] = retrieval_summary(ranks, candidates)
    result["zero_shot"] = {a: zero_shot_accuracy(images, zero_shot_cases(scenes, a), embed_text) for a in attributes}
    return result


def print_report(result: dict[str, Any]) -> None:
    r = result["retrieval"]
    print(f"CLIP on {result['split']} ({result['scenes']} scenes)")
    print(f"text->image retrieval among {r['candidates']}: top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  "
          f"mean rank {r['mean_rank']:.2f}  (chance top-1 {r['chance_top1']:.3f}; compact captions: "
          f"top-1 {result['retrieval_compact']['top1']:.3f})")
    print(f"{'attribute':<10} {'accuracy':>9} {'chance':>7} {'cases':>6}")
    for name, z in result["zero_shot"].items():
        print(f"{name:<10} {z['accuracy']:>9.3f} {z['chance']:>7.3f} {z['cases']:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.evaluation.clip_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=Path("weights/shapes/clip"), help="open_clip local-dir folder")
    parser.add_argument("--split", nargs="+", default=["eval"], help="world splits (default: eval)")
    parser.add_argument("--count", type=int, default=1000, help="scenes per split (default 1000)")
    parser.add_argument("--candidates", type=int, default=100, help="retrieval candidates (default 100)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from cascade.evaluation.report import evaluate_and_report
    from cascade.training.engine import resolve_path

    clip = resolve_path(str(args.clip))
    return evaluate_and_report(
        "clip_eval", lambda: [evaluate_clip(clip, split, args.count, args.candidates) for split in args.split],
        print_report, args.json)


if __name__ == "__main__":
    sys.exit(main())
