"""Process-group set-up for the launchers we support: ``deepspeed``, ``torchrun`` and plain ``python``.

DeepSpeed must see ``DS_ACCELERATOR=cpu`` before it is first imported on a machine without a
GPU, so :func:`configure_environment` runs before any import of deepspeed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


def configure_environment() -> None:
    """Defaults for a single plain-``python`` process, the CPU accelerator, thread counts, and quiet
    library loggers (DeepSpeed and torch's extension builder log routine notices as warnings)."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "OMP_NUM_THREADS" not in os.environ and local_ranks > 1:
        # Ranks on one CPU share its cores; oversubscribing makes each 2-3x slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))


_file_store_folder: Path | None = None  # the single-process rendezvous folder, removed at shutdown


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU).

    Under a launcher the ranks meet at ``MASTER_ADDR:MASTER_PORT``. A single plain-``python``
    process meets only itself, through a private file store: no TCP port to pick, so runs started
    side by side can never collide on one.
    """
    configure_environment()
    import logging

    import deepspeed
    import torch.distributed as dist

    deepspeed.utils.logger.setLevel(logging.ERROR)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "MASTER_PORT" in os.environ or int(os.environ["WORLD_SIZE"]) > 1:
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        else:
            global _file_store_folder
            _file_store_folder = Path(tempfile.mkdtemp(prefix="cascade-dist-"))
            try:
                deepspeed.init_distributed(dist_backend=backend, verbose=False, auto_mpi_discovery=False,
                                           init_method=f"file://{_file_store_folder / 'store'}", rank=0, world_size=1)
            except BaseException:
                shutdown()
                raise
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is True on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"  # nccl: GPU tensors only
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def shutdown() -> None:
    """A barrier, then tear the group down (two-rank CPU runs can abort at exit without it)."""
    import torch.distributed as dist

    global _file_store_folder
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if _file_store_folder is not None:
        shutil.rmtree(_file_store_folder, ignore_errors=True)
        _file_store_folder = None
