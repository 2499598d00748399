"""Teaching a trained world CLIP the words that only clips use (the motion words).

The world CLIP learns from images, whose captions carry no motion word: "falling", "rising",
"moving", "standing", "still", "into" keep the random rows they started with, and the text
tower barely tells them apart (the pooled features of "a red cube falling ..." and "... rising
..." differ by ~5%, two colours by ~60%). A video stage conditioned on that CLIP cannot learn
which way to move: its objects move the way the noise leads them, whatever the verb says
(docs/training.md, video phase 6).

This fine-tune learns only those tokens' rows of the token embedding (as textual inversion does,
Gal et al. 2022, "An Image is Worth One Word"); the rest of the CLIP is frozen, so every caption
without a taught word encodes exactly as before, and the stages trained on the CLIP (base,
prior, super-resolution) stay valid for image captions. A caption holding a taught word encodes
differently (the tokens after it and the pooled feature see it): given clip captions through the
taught CLIP, the shipped base's all-correct rate fell from 14.6% to 6.2% (48 eval scenes). So a
cascade gives the taught CLIP to its video stage only (``video_text_encoder`` in cascade.yaml). The rows are learned contrastively against a clip
embedding: the frozen image tower's mean frame feature plus a small motion tower on the frames
(zero at first, trained alongside, not exported), with in-batch negatives and, for each clip,
hard negatives that differ only in one group's motion.

    python -m cascade.training.clip_words --clip weights/shapes/clip --out runs/clip-words --steps 500
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cascade.errors import UserError

#: The file a taught folder adds beside open_clip's: which tokens were taught, and how well.
TAUGHT_FILE = "taught_words.json"


@dataclass(frozen=True)
class WordTeaching:
    """Settings of one fine-tune (defaults: the shapes world's 64 px, 8-frame clips)."""

    steps: int = 500
    batch_size: int = 32
    frames: int = 8
    size: int = 64
    row_lr: float = 3e-3
    tower_lr: float = 3e-3
    seed: int = 0
    vocabulary_scenes: int = 2000


def clip_only_tokens(tokenizer: Any, scenes: int = 2000) -> list[int]:
    """Token ids that clip captions use and image captions never do, over ``scenes`` train scenes
    in every caption style (sorted). For the shapes world: the motion words."""
    from data_pipeline.world import CAPTION_STYLES, caption, sample_scene

    def ids(clip: bool) -> set[int]:
        found: set[int] = set()
        for seed in range(scenes):
            scene = sample_scene("train", seed, clip=clip)
            for style in CAPTION_STYLES:
                found.update(tokenizer.encode(caption(scene, style=style, seed=seed)))
        return found

    return sorted(ids(clip=True) - ids(clip=False))


class MotionTower(nn.Module):
    """Frames [B, F, 3, H, W] in [-1, 1] -> [B, E]: how learned keypoints move; zero at first.

    Each of ``channels`` maps (convolutions of the frame and of its difference from the clip's
    median frame, which holds the still background) becomes a keypoint by a spatial softmax
    (Finn et al. 2016, "Deep Spatial Autoencoders"); the least-squares slope of its x and y over
    the frames is its velocity, and an MLP maps the velocities to the embedding. Told to classify
    a group's motion from 32-clip batches, a convolutional tower on frame pairs with pooling stayed near
    chance for 150 steps; this one passed 80% in 60.
    """

    def __init__(self, embed_dim: int, channels: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.maps = nn.Sequential(nn.Conv2d(6, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, channels, 1))
        self.out = nn.Sequential(nn.Linear(2 * channels, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, frames: Tensor) -> Tensor:
        b, f, _, h, w = frames.shape
        moving = frames - frames.median(dim=1, keepdim=True).values  # [B, F, 3, H, W]
        maps = self.maps(torch.cat([frames, moving], dim=2).flatten(0, 1))  # [B F, C, H, W]
        weights = maps.flatten(2).float().softmax(dim=-1).view(b, f, -1, h, w)
        x = (weights.sum(dim=3) * torch.linspace(-1, 1, w, device=frames.device)).sum(-1)  # [B, F, C]
        y = (weights.sum(dim=4) * torch.linspace(-1, 1, h, device=frames.device)).sum(-1)  # [B, F, C]
        t = torch.arange(f, dtype=torch.float32, device=frames.device)
        t = (t - t.mean()) / ((t - t.mean()).square().sum().clamp_min(1.0) / f)  # slope weights, mean-free
        velocity = torch.cat([(x * t[:, None]).mean(1), (y * t[:, None]).mean(1)], dim=-1)  # [B, 2C], per frame
        return self.out(velocity * 10.0)  # world objects move ~0.1 of this range a frame


class WordTeacher(nn.Module):
    """A frozen open_clip CLIP whose ``taught`` token rows are trainable, and the motion tower."""

    def __init__(self, model: nn.Module, taught: list[int]) -> None:
        super().__init__()
        if not taught:
            raise UserError("no token to teach: the clip captions use no word the image captions lack")
        self.model = model.requires_grad_(False).eval()
        table = model.token_embedding.weight  # [V, W]
        lookup = torch.full((table.shape[0],), -1, dtype=torch.long)
        lookup[torch.tensor(taught)] = torch.arange(len(taught))
        self.register_buffer("lookup", lookup, persistent=False)  # token id -> row of `rows`, or -1
        self.taught = list(taught)
        self.rows = nn.Parameter(table[taught].detach().float().clone())  # [K, W]
        self.motion = MotionTower(int(model.text_projection.shape[1]))
        model.token_embedding.register_forward_hook(self._substitute)

    def _substitute(self, _module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        slot = self.lookup[inputs[0]]  # [N, L]
        rows = self.rows.to(out.dtype)[slot.clamp_min(0)]  # [N, L, W]
        return torch.where((slot >= 0).unsqueeze(-1), rows, out)

    def text_features(self, ids: Tensor) -> Tensor:
        """Token ids [N, L] -> unit features [N, E]."""
        return self.model.encode_text(ids, normalize=True)

    def clip_features(self, frames: Tensor) -> Tensor:
        """Frames [B, F, 3, H, W] in [-1, 1] -> unit features [B, E]: mean frame feature + motion."""
        from stages.clip_world import normalise_images

        b, f = frames.shape[:2]
        with torch.no_grad():
            per_frame = self.model.encode_image(normalise_images(frames.flatten(0, 1)), normalize=True)  # [B F, E]
        appearance = per_frame.view(b, f, -1).mean(dim=1)  # [B, E]
        return nn.functional.normalize(appearance.float() + self.motion(frames).float(), dim=-1)

    def loss(self, frames: Tensor, positive: Tensor, negative: Tensor, has_negative: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, hard-negative accuracy) of a batch.

        :param frames: [B, F, 3, H, W]. :param positive: [B, L] caption ids.
        :param negative: [B, K, L] captions with one group's motion changed; ``has_negative`` [B, K].
        Each clip's logits: its similarity to all B captions, then to its own K negatives.
        """
        b, k = negative.shape[:2]
        video = self.clip_features(frames)  # [B, E]
        text = self.text_features(torch.cat([positive, negative.flatten(0, 1)])).float()  # [B + B K, E]
        scale = self.model.logit_scale.exp().float().reshape(())
        in_batch = video @ text[:b].T  # [B, B]
        hard = (video.unsqueeze(1) * text[b:].view(b, k, -1)).sum(-1)  # [B, K]
        hard = hard.masked_fill(~has_negative, float("-inf"))
        logits = scale * torch.cat([in_batch, hard], dim=1)  # [B, B + K]
        target = torch.arange(b)
        own = in_batch.diagonal().unsqueeze(1)  # [B, 1]
        beaten = ((hard >= own) & has_negative).any(dim=1)
        return nn.functional.cross_entropy(logits, target), (~beaten).float().mean()


def motion_negatives(scene: Any, rng: np.random.Generator) -> list[Any]:
    """The scene with one (random) group's motion replaced by each other motion."""
    from cascade.training.world_captions import with_attribute
    from data_pipeline.world.constants import MOTIONS

    g = int(rng.integers(len(scene.groups)))
    return [with_attribute(scene, "motion", motion, g) for motion in MOTIONS if motion != scene.groups[g].motion]


def clip_batch(tokenizer: Any, seeds: list[int], split: str, size: int, frames: int, rng: np.random.Generator,
               drop_words: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """World clips of ``seeds`` and their captions: frames [B, F, 3, H, W] in [-1, 1], positive ids
    [B, L], motion-negative ids [B, K, L] and which negatives differ from the positive [B, K]."""
    from cascade.images import from_uint8
    from data_pipeline.world import caption, render_clip, sample_scene

    clips, positives, negatives = [], [], []
    for seed in seeds:
        scene = sample_scene(split, seed, clip=True, frames=frames)
        clips.append(render_clip(scene, size))
        caption_seed = int(rng.integers(2**31 - 1))
        text = caption(scene, seed=caption_seed, drop_words=drop_words)
        positives.append(text)
        negatives.append([caption(other, seed=caption_seed, drop_words=drop_words) for other in motion_negatives(scene, rng)])
    video = from_uint8(np.stack(clips))  # [B, F, 3, H, W]
    has_negative = torch.tensor([[n != p for n in row] for p, row in zip(positives, negatives)])  # [B, K]
    negative_ids = tokenizer([n for row in negatives for n in row]).view(len(seeds), -1, tokenizer.context_length)
    return video, tokenizer(positives), negative_ids, has_negative


def load_clip_folder(folder: Path) -> tuple[nn.Module, Any]:
    """(float32 open_clip CLIP, its tokenizer) of a ``local-dir:`` folder, loaded as the text encoder loads it."""
    from cascade.text.open_clip_encoder import load_local_dir_model
    from stages.clip_world import clip_tokenizer

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"CLIP folder not found: {path}")
    model, model_cfg = load_local_dir_model(path)
    return model.float(), clip_tokenizer(int(model_cfg["text_cfg"]["context_length"]))


def eval_batch(tokenizer: Any, settings: WordTeaching, clips: int = 64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first ``clips`` clips of the ``eval`` split with full captions and their motion negatives."""
    return clip_batch(tokenizer, list(range(clips)), "eval", settings.size, settings.frames,
                      np.random.default_rng(1), drop_words=False)


def motion_accuracy(teacher: WordTeacher, batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
    """How often the caption with the true motions beats every motion-changed one, on ``batch``."""
    with torch.no_grad():
        return float(teacher.loss(*batch)[1])


def teach(source: Path, out: Path, settings: WordTeaching, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the clip-only token rows of the CLIP in ``source``; write the taught folder to ``out``."""
    from tqdm import tqdm

    from stages.clip_world import WEIGHTS_FILE

    torch.manual_seed(settings.seed)
    model, tokenizer = load_clip_folder(source)
    if not (Path(source) / WEIGHTS_FILE).is_file():  # checked before training: the export rewrites this file
        raise UserError(f"no {WEIGHTS_FILE} in {source}: a world CLIP folder (as clip_task exports it) is needed")
    taught = clip_only_tokens(tokenizer, settings.vocabulary_scenes)
    teacher = WordTeacher(model, taught)
    optimizer = torch.optim.AdamW([{"params": [teacher.rows], "lr": settings.row_lr, "weight_decay": 0.0},
                                   {"params": teacher.motion.parameters(), "lr": settings.tower_lr}])
    held_out = eval_batch(tokenizer, settings)
    before = motion_accuracy(teacher, held_out)
    rng = np.random.default_rng(settings.seed)
    bar = tqdm(range(settings.steps), desc="teach words", unit="step", disable=not progress)
    for _ in bar:
        seeds = rng.integers(0, 10**9, settings.batch_size).tolist()
        batch = clip_batch(tokenizer, seeds, "train", settings.size, settings.frames, rng, drop_words=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, accuracy = teacher.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", hard=f"{accuracy.item():.2f}")
    after = motion_accuracy(teacher, held_out)
    words = [tokenizer.decode([t]).strip() for t in taught]
    report = {"source": str(source), "token_ids": taught, "words": words, "steps": settings.steps,
              "batch_size": settings.batch_size, "eval_motion_accuracy_before": before,
              "eval_motion_accuracy_after": after}
    write_taught_folder(source, out, teacher, report)
    return report


def write_taught_folder(source: Path, out: Path, teacher: WordTeacher, report: dict[str, Any]) -> Path:
    """``source``'s files with the taught rows written into the token table (its dtype kept), plus
    :data:`TAUGHT_FILE`; each file written atomically."""
    from safetensors.torch import load_file, save

    from cascade.fileio import atomic_write_bytes, atomic_write_text
    from stages.clip_world import CONFIG_FILE, WEIGHTS_FILE

    state = load_file(str(Path(source) / WEIGHTS_FILE))
    table = state["token_embedding.weight"].clone()
    table[torch.tensor(teacher.taught)] = teacher.rows.detach().to(table.dtype)
    state["token_embedding.weight"] = table
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    atomic_write_bytes(out / CONFIG_FILE, (Path(source) / CONFIG_FILE).read_bytes())
    atomic_write_text(out / TAUGHT_FILE, json.dumps(report, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.training.clip_words",
                                     description="Teach a world CLIP the words only clip captions use (motion words).")
    parser.add_argument("--clip", type=Path, required=True, help="the world CLIP folder to start from")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (a CLIP local-dir folder)")
    parser.add_argument("--steps", type=int, default=WordTeaching.steps, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=WordTeaching.batch_size, help="clips a step (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1 or args.batch_size < 2:
            raise UserError("--steps must be >= 1 and --batch-size >= 2")
        if args.out.resolve() == args.clip.resolve():
            raise UserError("--out must differ from --clip (the source folder is read, never overwritten)")
        report = teach(args.clip, args.out, WordTeaching(steps=args.steps, batch_size=args.batch_size))
    except UserError as error:
        print(f"clip_words: error: {error}", file=sys.stderr)
        return 2
    print(f"taught {', '.join(report['words'])}: eval motion accuracy "
          f"{report['eval_motion_accuracy_before']:.2f} -> {report['eval_motion_accuracy_after']:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
