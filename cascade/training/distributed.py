"""Process-group set-up for the launchers we support: ``deepspeed``, ``torchrun`` and plain ``python``.

DeepSpeed must see ``DS_ACCELERATOR=cpu`` before it is first imported on a machine without a
GPU, so :func:`configure_environment` runs before any import of deepspeed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "OMP_NUM_THREADS" not in os.environ and local_ranks > 1:
        # Ranks on one CPU share its cores; oversubscribing makes each 2-3x slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU)."""
    configure_environment()
    import logging

    import deepspeed
    import torch.distributed as dist

    deepspeed.utils.logger.setLevel(logging.ERROR)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
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
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def shutdown() -> None:
    """A barrier, then tear the group down (two-rank CPU runs can abort at exit without it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
