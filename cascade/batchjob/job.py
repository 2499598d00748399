"""Running a batch job: plan, skip what is finished, render this rank's batches, write, summarise.

Spread over ranks by the launcher (``torchrun`` / ``deepspeed`` set RANK and WORLD_SIZE); no
coordinator of our own: ranks meet only at two barriers (after the folder is prepared, and
before the manifest is written). Each output file is written atomically, then journalled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cascade.batchjob.plan import Output, global_batches, plan_outputs, rank_batches
from cascade.batchjob.prompts import Rejected, read_prompt_file
from cascade.batchjob.records import (
    Journal,
    claim_folder,
    read_journal,
    remove_temporary_files,
    sha256_file,
    write_manifest,
)
from cascade.errors import UserError
from cascade.images import save_png, save_video, to_uint8


@dataclass(frozen=True)
class JobRequest:
    prompts: Path
    out: Path
    checkpoint: Path
    per_prompt: int = 1
    seed: int = 0
    batch_size: int = 4
    size: int | None = None
    sampler: str | None = None
    steps: tuple[int, ...] | None = None
    guidance: tuple[float, ...] | None = None
    video: bool = False
    frames: int | None = None
    fps: int | None = None
    format: str = "png"
    force: bool = False
    progress: bool = True


@dataclass
class JobSummary:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        failed = len(self.failed) + len(self.rejected)
        return (f"done {self.done}, skipped as already done {self.skipped}, failed {failed} "
                f"in {self.seconds:.1f} s")


def _distributed() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; a process group is set up for the barriers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _record(output: Output, request: JobRequest, settings: Any, stages: int, path: Path) -> dict[str, Any]:
    return {
        "id": output.item.id, "index": output.index, "prompt": output.item.prompt, "seed": output.seed,
        "size": output.size, "sampler": settings.sampler, "steps": list(settings.steps[:stages]),
        "guidance": list(settings.guidance[:stages]), "file": output.file, "sha256": sha256_file(path),
        **({"frames": request.frames} if request.video else {}),
    }


def run_job(request: JobRequest) -> JobSummary:
    from cascade.pipeline import Cascade

    started = time.perf_counter()
    if request.per_prompt < 1 or request.batch_size < 1:
        raise UserError(f"--per-prompt and --batch-size must be >= 1, got {request.per_prompt} and {request.batch_size}")
    if not 0 <= request.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, got {request.seed}")
    if request.format not in ("png", "webdataset"):
        raise UserError(f"unknown format {request.format!r} (choose from: png, webdataset)")
    items, rejected = read_prompt_file(request.prompts)
    rank, world = _distributed()
    cascade = Cascade.load(request.checkpoint, video=request.video)
    size = request.size or cascade.sizes[-1]
    cascade.check_size(size)
    frames = (request.frames or cascade.config.defaults.frames) if request.video else None
    extension = ".gif" if request.video else ".png"
    summary = JobSummary(rejected=list(rejected))
    usable = []
    for item in items:
        if item.size is not None and item.size not in cascade.sizes:
            summary.rejected.append(Rejected(item.line, f"size {item.size} is not one of {cascade.sizes}"))
        else:
            usable.append(item)
    outputs = plan_outputs(usable, request.per_prompt, request.seed, size, extension)
    identity = {
        "checkpoint": str(Path(request.checkpoint).resolve()), "per_prompt": request.per_prompt, "seed": request.seed,
        "size": size, "sampler": request.sampler, "steps": list(request.steps or []),
        "guidance": list(request.guidance or []), "video": request.video, "frames": frames, "format": request.format,
    }
    if rank == 0:
        claim_folder(request.out, identity, request.force)
        remove_temporary_files(request.out)
    _barrier(world)

    finished = read_journal(request.out)
    journal = Journal(request.out, rank)
    mine = rank_batches(global_batches(outputs, request.batch_size), rank, world)
    pending = [b for b in mine if any(not _is_done(o, finished, request.out) for o in b)]
    summary.skipped = sum(len(b) for b in mine) - sum(
        sum(1 for o in b if not _is_done(o, finished, request.out)) for b in pending)
    bar = tqdm(total=sum(len(b) for b in pending), unit="img", desc="batch", disable=not request.progress or rank != 0)
    for batch in pending:
        try:
            rows = _render_batch(cascade, batch, request, size, frames, finished)
        except UserError as error:
            summary.failed.extend(f"{o.item.id}#{o.index}: {error}" for o in batch)
            bar.update(len(batch))
            continue
        journal.append(rows)
        summary.done += len(rows)
        bar.update(len(batch))
    bar.close()
    _barrier(world)
    if rank == 0:
        finished = read_journal(request.out)
        write_manifest(request.out, [finished[o.key] for o in outputs if o.key in finished])
        if request.format == "webdataset":
            _write_shards(request.out, [finished[o.key] for o in outputs if o.key in finished])
    summary.seconds = time.perf_counter() - started
    return summary


def _is_done(output: Output, finished: dict, out: Path) -> bool:
    row = finished.get(output.key)
    return row is not None and (out / output.file).is_file() and row.get("seed") == output.seed


def _render_batch(cascade: Any, batch: list[Output], request: JobRequest, size: int, frames: int | None,
                  finished: dict) -> list[dict[str, Any]]:
    """Render a whole global batch (so its pixels are those of any other run) and write what is missing."""
    guidance = batch[0].guidance or request.guidance
    settings = cascade.settings(sampler=request.sampler, steps=request.steps, guidance=guidance)
    images = cascade.render([o.item.prompt for o in batch], [o.seed for o in batch], batch[0].size, settings,
                            frames=frames, progress=False)[-1]
    rows = []
    for output, image in zip(batch, images):
        path = request.out / output.file
        if _is_done(output, finished, request.out):
            continue
        if frames is None:
            save_png(path, to_uint8(image), {"prompt": output.item.prompt, "seed": str(output.seed), "id": output.item.id})
        else:
            save_video(path, to_uint8(image), fps=request.fps or cascade.config.defaults.fps)
        rows.append(_record(output, request, settings, cascade.check_size(output.size), path))
    return rows


def _write_shards(out: Path, rows: list[dict[str, Any]]) -> None:
    """Pack the finished outputs into webdataset shards (same bytes on every run)."""
    import json

    from data_pipeline.shards import ShardWriter

    with ShardWriter(out / "shards", prefix="batch", maxcount=1000) as writer:
        for row in rows:
            key = Path(row["file"]).stem
            suffix = Path(row["file"]).suffix.lstrip(".")
            writer.write({"__key__": key, suffix: (out / row["file"]).read_bytes(),
                          "txt": row["prompt"].encode("utf-8"), "json": json.dumps(row, sort_keys=True).encode("utf-8")})
