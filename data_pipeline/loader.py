"""The training loader of every stage: shards -> shuffled, decoded, sized batches.

Exactly once per epoch over ranks x DataLoader workers: the epoch's shard order is a
permutation seeded by (seed, epoch); of N = world_size * num_workers reading slots (slot =
rank * num_workers + worker), whole rounds of N shards go to the slots shard by shard, and
the last ``S mod N`` shards (all, when there are fewer shards than slots) are split sample
by sample: a shard read by g slots gives its sample i to reader i mod g (:func:`shard_plan`).

Determinism and resume: each slot shuffles its raw (undecoded) samples in a buffer seeded
by (seed, epoch, slot); crops and blur use a generator seeded by (seed, epoch, shard name,
key). A :class:`LoaderPosition` (per rank) records the raw samples each worker has drawn up
to the last batch handed out and the worker that comes next; resuming replays each worker's
raw stream without decoding and continues with the same batches in the same order.

Bad samples are skipped and counted by reason (:data:`SKIP_REASONS`); workers send their
counts with every batch, so :attr:`ShardLoader.stats` covers all workers of this rank.
Gathering counts over ranks is the trainer's job (``stats.as_dict()``).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cascade.errors import UserError
from data_pipeline.degrade import StageSizes, to_stage
from data_pipeline.shards import TAR_REASONS, SkipStats, iter_samples, list_shards, unstrip_clip

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
#: Every reason a sample (or a place in a shard) can be skipped for.
SKIP_REASONS = TAR_REASONS + (
    "missing_image", "corrupt_image", "bad_mode", "too_small", "bad_frames",
    "missing_caption", "bad_caption_encoding", "empty_caption", "caption_too_long",
    "missing_embedding", "bad_embedding", "bad_embedding_shape",
)
EMBEDDING_EXT = "emb.safetensors"


@dataclass(frozen=True)
class DecodeOptions:
    """Checks applied to each sample besides its image.

    ``embedding_decoder(raw_bytes)`` turns a ``KEY.emb.safetensors`` member into a tensor, a
    tuple of tensors (e.g. ``data_pipeline.embed.decode_embedding``: tokens [L, D], pooled
    [D_p]) or a mapping of tensors; any exception it raises skips the sample, and so does a
    missing member. Without a decoder, embeddings are ignored. ``embedding_shape`` is the shape the result must have,
    nested like it (``((None, 512), (512,))`` for that tuple; None: any size).
    ``embedding_collate(list)`` batches the results (default: stack equal shapes, keep
    ragged ones as lists, element by element for tuples and mappings).
    """

    max_caption_chars: int = 1000
    embedding_decoder: Callable[[bytes], Any] | None = None
    embedding_shape: Any = None
    embedding_collate: Callable[[list[Any]], Any] | None = None


def sample_generator(seed: int, epoch: int, url: str, key: str) -> torch.Generator:
    """A generator for one sample's augmentations, independent of workers, ranks and resume."""
    digest = hashlib.blake2b(f"{seed}|{epoch}|{os.path.basename(url)}|{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _shape_ok(value: Any, shape: Any) -> bool:
    if isinstance(shape, Mapping):
        return isinstance(value, Mapping) and all(k in value and _shape_ok(value[k], s) for k, s in shape.items())
    if any(isinstance(s, (tuple, list)) for s in shape):  # one shape per element of a tuple
        return isinstance(value, (tuple, list)) and len(value) == len(shape) and all(map(_shape_ok, value, shape))
    if not isinstance(value, torch.Tensor) or value.dim() != len(shape):
        return False
    return all(want is None or want == got for want, got in zip(shape, value.shape))


def _decode_embedding(raw: Mapping[str, Any], options: DecodeOptions) -> Any:
    """The decoded embedding, None when there is none to decode, or a skip reason (str)."""
    if options.embedding_decoder is None:
        return None
    if EMBEDDING_EXT not in raw:
        return "missing_embedding"
    try:
        value = options.embedding_decoder(raw[EMBEDDING_EXT])
    except Exception:  # any failure of a corrupt member is this sample's problem only
        return "bad_embedding"
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if options.embedding_shape is not None and not _shape_ok(value, options.embedding_shape):
        return "bad_embedding_shape"
    return value


def _decode_pixels(raw: Mapping[str, Any], stage: StageSizes) -> np.ndarray | str:
    """uint8 [T, H, W, 3] (T = 1 for an image, F for a clip), or a skip reason."""
    from PIL import Image

    ext = "clip.png" if stage.frames else next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None or ext not in raw:
        return "missing_image"
    try:
        with Image.open(io.BytesIO(raw[ext])) as image:
            image.load()
            if image.mode != "RGB":
                return "bad_mode"
            pixels = np.array(image)  # a writable copy
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        return "corrupt_image"
    if not stage.frames:
        return pixels[None]
    height, width = pixels.shape[:2]
    if width % height or width // height != stage.frames:
        return "bad_frames"
    return unstrip_clip(pixels)


def decode_sample(raw: Mapping[str, Any], stage: StageSizes, options: DecodeOptions, *,
                  seed: int, epoch: int) -> dict[str, Any] | str:
    """Decode one raw shard sample into training tensors, or return why it is skipped.

    :return: ``{"pixels": [T, 3, S, S] float in [-1, 1], "low_res": [T, 3, s, s] (SR stages),
        "caption": str, "key": str, "text_emb": tensor (when decoded)}`` with S = crop or size,
        s = S * low_res / size; or a reason from :data:`SKIP_REASONS`.
    """
    text = raw.get("txt")
    if text is None:
        return "missing_caption"
    try:
        caption = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "bad_caption_encoding"
    if not caption:
        return "empty_caption"
    if len(caption) > options.max_caption_chars:
        return "caption_too_long"
    embedding = _decode_embedding(raw, options)
    if isinstance(embedding, str):
        return embedding
    pixels = _decode_pixels(raw, stage)
    if isinstance(pixels, str):
        return pixels
    height, width = pixels.shape[1:3]
    if min(height, width) < stage.size:
        return "too_small"
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (T, 3, H, W) in [-1, 1]
    generator = sample_generator(seed, epoch, raw.get("__url__", ""), raw["__key__"])
    out: dict[str, Any] = {"caption": caption, "key": raw["__key__"]}
    out["pixels"], low_res = to_stage(x, stage, generator=generator)  # (T, 3, S, S), (T, 3, s, s) | None
    if low_res is not None:
        out["low_res"] = low_res
    if embedding is not None:
        out["text_emb"] = embedding
    return out


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        return {name: _stack([v[name] for v in values]) for name in first}
    if isinstance(first, (tuple, list)):
        return tuple(_stack(list(items)) for items in zip(*values))
    if isinstance(first, torch.Tensor) and all(v.shape == first.shape for v in values):
        return torch.stack(values)
    return values  # ragged (e.g. token sequences of different lengths) or not tensors: a list


def collate(samples: list[dict[str, Any]], clips: bool,
            embedding_collate: Callable[[list[Any]], Any] | None = None) -> dict[str, Any]:
    """Decoded samples -> a batch: ``image`` [B, 3, H, W] or ``frames`` [B, F, 3, H, W] in [-1, 1],
    ``low_res`` [B, 3, h, w] / [B, F, 3, h, w] for SR stages, ``caption`` and ``key`` lists,
    ``text_emb`` stacked when present."""
    pixels = torch.stack([s["pixels"] for s in samples])  # (B, T, 3, H, W)
    batch: dict[str, Any] = {"frames" if clips else "image": pixels if clips else pixels[:, 0]}
    if "low_res" in samples[0]:
        low = torch.stack([s["low_res"] for s in samples])  # (B, T, 3, h, w)
        batch["low_res"] = low if clips else low[:, 0]
    batch["caption"] = [s["caption"] for s in samples]
    batch["key"] = [s["key"] for s in samples]
    if "text_emb" in samples[0]:
        batch["text_emb"] = (embedding_collate or _stack)([s["text_emb"] for s in samples])
    return batch


def shard_plan(num_shards: int, num_slots: int, slot: int) -> list[tuple[int, int, int]]:
    """The reading plan of one slot: ``(shard position, stride, offset)`` triples.

    The slot reads samples i with ``i % stride == offset`` of the shard at that position of
    the epoch's shard order. Over all slots every sample is planned exactly once.
    """
    full = num_shards // num_slots * num_slots
    plan = [(position, 1, 0) for position in range(slot, full, num_slots)]
    rest = num_shards - full
    if rest:
        readers = len(range(slot % rest, num_slots, rest))
        plan.append((full + slot % rest, readers, slot // rest))
    return plan


def shuffled(items: Iterable[Any], buffer: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream with a buffer of ``buffer`` items (no shuffling when buffer <= 1)."""
    if buffer <= 1:
        yield from items
        return
    pool: list[Any] = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        index = int(rng.integers(buffer))
        pool[index], item = item, pool[index]
        yield item
    rng.shuffle(pool)
    yield from pool


@dataclass
class BatchMeta:
    """Sent by a worker with each batch: who made it and how far that worker has got."""

    worker: int  # logical worker id (0 .. num_workers - 1)
    consumed: int  # raw samples drawn from the shuffle buffer so far this epoch
    skipped: dict[str, int]  # this worker's skip counts so far this epoch
    done: bool = False  # the worker's last message of the epoch (no batch)


@dataclass
class ShardDataset(IterableDataset):
    """Yields ``(BatchMeta, batch | None)``; use it through :class:`ShardLoader`."""

    shards: list[str]
    stage: StageSizes
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    shuffle_buffer: int = 256
    shuffle_shards: bool = True
    drop_last: bool = False
    options: DecodeOptions = field(default_factory=DecodeOptions)
    # where each logical worker resumes: worker -> (raw samples drawn, skip counts then)
    resume: dict[int, tuple[int, dict[str, int]]] = field(default_factory=dict)
    rotate: int = 0  # DataLoader worker i plays logical worker (i + rotate) % num_workers

    def raw_stream(self, slot: int, num_slots: int, stats: SkipStats) -> Iterator[dict[str, Any]]:
        """The undecoded samples of one slot this epoch, before shuffling."""
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        for position, stride, offset in shard_plan(len(self.shards), num_slots, slot):
            # a shard shared by several slots: only its first reader counts damage to the tar
            counts = stats if offset == 0 else SkipStats()
            for raw in iter_samples(self.shards[order[position]], counts):
                if raw["__index__"] % stride == offset:
                    yield raw

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples, bool(self.stage.frames), self.options.embedding_collate)

    def __iter__(self) -> Iterator[tuple[BatchMeta, dict[str, Any] | None]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker = ((info.id if info is not None else 0) + self.rotate) % workers
        slot = self.rank * workers + worker
        stats = SkipStats()
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        stream = shuffled(self.raw_stream(slot, self.world_size * workers, stats), self.shuffle_buffer, rng)
        consumed, restored = self.resume.get(worker, (0, {}))
        for _ in zip(range(consumed), stream):  # replay without decoding
            pass
        stats.counts.clear()
        stats.merge(restored)
        samples: list[dict[str, Any]] = []
        for raw in stream:
            consumed += 1
            sample = decode_sample(raw, self.stage, self.options, seed=self.seed, epoch=self.epoch)
            if isinstance(sample, str):
                stats.add(sample)
                continue
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield BatchMeta(worker, consumed, stats.as_dict()), self._collate(samples)
                samples = []
        if samples and not self.drop_last:
            yield BatchMeta(worker, consumed, stats.as_dict()), self._collate(samples)
        yield BatchMeta(worker, consumed, stats.as_dict(), done=True), None


@dataclass
class LoaderPosition:
    """Where a rank's loader stands: epoch, raw samples drawn per worker, the next worker."""

    epoch: int = 0
    consumed: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, dict[str, int]] = field(default_factory=dict)
    next_worker: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": {str(w): n for w, n in self.consumed.items()},
                "skipped": {str(w): dict(c) for w, c in self.skipped.items()}, "next_worker": self.next_worker}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "LoaderPosition":
        return cls(int(state["epoch"]), {int(w): int(n) for w, n in state["consumed"].items()},
                   {int(w): dict(c) for w, c in state["skipped"].items()}, int(state["next_worker"]))


class ShardLoader:
    """Iterate to get one epoch of batches (from the current position); see :func:`make_loader`.

    :attr:`position` advances with every batch handed out and moves to the next epoch when
    an epoch ends; ``state_dict()`` / ``load_state_dict()`` save and restore it.
    :attr:`stats` holds this rank's skip counts for the current (or just finished) epoch.
    """

    def __init__(self, dataset: ShardDataset, *, num_workers: int = 0, prefetch_factor: int = 2) -> None:
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.position = LoaderPosition(epoch=dataset.epoch)
        self.stats = SkipStats()

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning on the next iteration."""
        self.position = LoaderPosition(epoch=epoch)

    def _layout(self) -> list[int]:
        data = self.dataset
        return [data.world_size, self.num_workers, data.seed, data.batch_size, data.shuffle_buffer]

    def state_dict(self) -> dict[str, Any]:
        """The position, plus the layout (world size, workers, seed, batch size, shuffle buffer) it holds for."""
        return {**self.position.state_dict(), "layout": self._layout()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where ``state`` was saved; the layout must be the same for an exact resume."""
        if "layout" in state and list(state["layout"]) != self._layout():
            raise UserError(f"loader state was saved with (world_size, num_workers, seed, batch_size, buffer) = "
                            f"{tuple(state['layout'])}, not {tuple(self._layout())}")
        self.position = LoaderPosition.from_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pos, workers = self.position, max(1, self.num_workers)
        resume = {w: (pos.consumed[w], pos.skipped.get(w, {})) for w in pos.consumed}
        dataset = replace(self.dataset, epoch=pos.epoch, resume=resume, rotate=pos.next_worker % workers)
        self.stats = SkipStats(sum(map(Counter, pos.skipped.values()), Counter()))  # over workers
        if self.num_workers == 0:
            items: Iterable[tuple[BatchMeta, Any]] = dataset
        else:
            items = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                               prefetch_factor=self.prefetch_factor)
        for meta, batch in items:
            pos.consumed[meta.worker] = meta.consumed
            pos.skipped[meta.worker] = meta.skipped
            pos.next_worker = (meta.worker + 1) % workers
            self.stats = SkipStats(sum(map(Counter, pos.skipped.values()), Counter()))  # over workers
            if batch is not None:
                yield batch
        self.position = LoaderPosition(epoch=pos.epoch + 1)


def _identity(item: Any) -> Any:
    return item


def make_loader(shards: str | Path | Iterable[str | Path], *, batch_size: int, stage: StageSizes,
                rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                seed: int = 0, epoch: int = 0, shuffle_buffer: int = 256, shuffle_shards: bool = True,
                drop_last: bool = False, options: DecodeOptions | None = None) -> ShardLoader:
    """The training loader of one stage over webdataset shards (paths, folders, globs, ``pipe:``).

    ``rank`` / ``world_size`` default to torch.distributed's when it is initialised, else 0 / 1.
    Each iteration of the result is one epoch; batches are dicts as in :func:`collate`.
    Ranks may get unequal batch counts (by up to one shard's worth of samples): a DDP
    trainer must stop all ranks together (e.g. all-reduce a "have a batch" flag).
    """
    if rank is None or world_size is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if ready else 0) if rank is None else rank
        world_size = (dist.get_world_size() if ready else 1) if world_size is None else world_size
    urls = list_shards(shards)
    if not urls:
        raise UserError(f"no shards found in {shards!s}")
    if batch_size < 1 or not 0 <= rank < world_size or num_workers < 0:
        raise UserError(f"bad loader settings: batch_size={batch_size}, rank={rank}/{world_size}, "
                        f"num_workers={num_workers}")
    dataset = ShardDataset(urls, stage, batch_size, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                           shuffle_buffer=shuffle_buffer, shuffle_shards=shuffle_shards, drop_last=drop_last,
                           options=options or DecodeOptions())
    return ShardLoader(dataset, num_workers=num_workers)
