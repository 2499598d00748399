"""What a batch job must make: every output's seed, size, file name, and the fixed global batches.

The batches are cut from the job's outputs in file order, before ranks are known, and rank r
renders batches r, r + N, r + 2N, ... So a batch holds the same outputs whatever the number of
ranks, and an output's pixels do not depend on how the job was spread.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cascade.batchjob.prompts import PromptItem

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def output_seed(job_seed: int, item_id: str, index: int) -> int:
    """A 63-bit seed that depends only on (job seed, item id, index)."""
    digest = hashlib.sha256(f"{job_seed}\x00{item_id}\x00{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def safe_name(item_id: str) -> str:
    """A file-name stem for an id that cannot leave the output folder: letters, digits, ``_`` and ``-``
    only, and a short hash of the id whenever anything had to be replaced (so distinct ids never collide)."""
    cleaned = _UNSAFE.sub("_", item_id)[:80]
    if cleaned != item_id or not cleaned:
        cleaned = f"{cleaned}_{hashlib.sha256(item_id.encode('utf-8')).hexdigest()[:10]}"
    return cleaned


@dataclass(frozen=True)
class Output:
    """One image (or clip) of a job. ``file`` is relative to the output folder."""

    item: PromptItem
    index: int
    seed: int
    size: int
    guidance: tuple[float, ...] | None
    file: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.item.id, self.index)


def plan_outputs(items: list[PromptItem], per_prompt: int, job_seed: int, size: int, extension: str) -> list[Output]:
    """All outputs of the job, in file order, ``per_prompt`` per item (index 0 .. per_prompt - 1)."""
    outputs = []
    for item in items:
        base_seed = job_seed if item.seed is None else item.seed
        stem = safe_name(item.id)
        for index in range(per_prompt):
            outputs.append(Output(
                item=item, index=index, seed=output_seed(base_seed, item.id, index),
                size=item.size or size, guidance=item.guidance, file=f"outputs/{stem}-{index:03d}{extension}",
            ))
    return outputs


def global_batches(outputs: list[Output], batch_size: int) -> list[list[Output]]:
    """Consecutive outputs grouped into batches of at most ``batch_size`` that share size and guidance."""
    batches: list[list[Output]] = []
    for output in outputs:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (last[0].size, last[0].guidance) == (output.size, output.guidance):
            last.append(output)
        else:
            batches.append([output])
    return batches


def rank_batches(batches: list[list[Output]], rank: int, world_size: int) -> list[list[Output]]:
    return batches[rank::world_size]
