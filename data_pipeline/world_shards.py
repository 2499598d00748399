"""Shapes-world shard sets: render scenes of a split and write them as webdataset shards."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import UserError, choice_error

#: What this module needs from data_pipeline.world.
WORLD_API = ("SPLITS", "sample_scene", "render_image", "render_clip", "caption")


@dataclass(frozen=True)
class WorldShardsResult:
    out: Path
    count: int
    shards: list[Path]


def _world():
    try:
        from data_pipeline import world
    except ImportError as error:
        raise UserError(f"the shapes world is not available: {error}") from None
    missing = [name for name in WORLD_API if not hasattr(world, name)]
    if missing:
        raise UserError(f"the shapes world is not available (data_pipeline.world lacks {', '.join(missing)})")
    return world


def world_sample(job: tuple[str, int, int, bool, int]) -> dict:
    """The shard record of scene seed ``seed``: key, caption, image or clip strip, scene json."""
    from data_pipeline.shards import sample_record

    world = _world()
    split, seed, size, clips, frames = job
    scene = world.sample_scene(split, seed, clip=clips, frames=frames)
    text = world.caption(scene, seed=seed, drop_words=split == "train")
    key = f"{split}-{seed:09d}"
    if clips:
        return sample_record(key, caption=text, frames=world.render_clip(scene, size), meta=scene.to_json())
    return sample_record(key, caption=text, image=world.render_image(scene, size), meta=scene.to_json())


def write_world_shards(
    out: Path,
    split: str,
    count: int,
    size: int,
    *,
    seed: int = 0,
    clips: bool = False,
    frames: int = 8,
    workers: int = 1,
    maxcount: int = 1000,
    prefix: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> WorldShardsResult:
    """Write scenes ``seed .. seed + count - 1`` of ``split`` at ``size`` px as shards in ``out``.

    Samples are written in seed order whatever the number of ``workers``, so the shards are the
    same bytes every time.
    """
    from tqdm import tqdm

    from data_pipeline.shards import ShardWriter, prepare_out_dir

    world = _world()
    if split not in world.SPLITS:
        raise choice_error("split", split, list(world.SPLITS))
    prefix = prefix or split
    target = prepare_out_dir(out, prefix, overwrite=overwrite)
    jobs = [(split, seed + i, size, clips, frames) for i in range(count)]
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        records = pool.imap(world_sample, jobs, chunksize=4) if pool else map(world_sample, jobs)
        with ShardWriter(target, prefix=prefix, maxcount=maxcount) as writer, tqdm(
            total=count, unit="sample", desc=f"world {split}", disable=not progress
        ) as bar:
            for record in records:
                writer.write(record)
                bar.update(1)
    finally:
        if pool is not None:
            pool.terminate()
    return WorldShardsResult(target, writer.count, list(writer.shards))
