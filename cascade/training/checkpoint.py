"""Training checkpoints: written atomically, found again, and loaded without running pickled code.

Layout under ``OUT/checkpoints``::

    step-00000500/            one DeepSpeed checkpoint (model, optimizer, LR schedule; per-rank shards)
        ema.safetensors       the EMA weights
        rank-00000.json       that rank's loader position and skip counts
        rank-00000.rng.safetensors   that rank's random generator states
        COMPLETE              written last, before the folder gets its final name
    latest                    the name of the newest complete checkpoint

Every rank writes into ``.tmp-step-00000500``; after a barrier the main rank marks it complete,
renames it and rewrites ``latest`` through a temp file. A run killed at any moment leaves either
the previous checkpoint or the new one, never a half-written folder that could be loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from cascade.errors import UserError
from cascade.fileio import atomic_write_text
from cascade.training.distributed import DistInfo, barrier

COMPLETE = "COMPLETE"
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    engine: Any,
    dist: DistInfo,
    ema_state: Any,
    rank_state: dict[str, Any],
    rng_state: dict[str, torch.Tensor],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` under ``root`` (collective: every rank calls it)."""
    from safetensors.torch import save_file

    tag = tag_for(step)
    tmp_tag = f".tmp-{tag}"
    tmp = root / tmp_tag
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    try:
        engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"cascade_step": step}, save_latest=False)
        (tmp / f"rank-{dist.rank:05d}.json").write_text(json.dumps(rank_state))
        save_file({k: v.contiguous() for k, v in rng_state.items()}, str(tmp / f"rank-{dist.rank:05d}.rng.safetensors"))
        if dist.is_main:
            ema_state.save(tmp / "ema.safetensors")
    except OSError as error:
        raise UserError(f"could not write checkpoint {tag} under {root}: {error.strerror or error}") from None
    barrier()
    final = root / tag
    if dist.is_main:
        atomic_write_text(tmp / COMPLETE, f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep)
    barrier()
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file())


def _prune(root: Path, keep: int) -> None:
    for old in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None if there is none)."""
    if not root.is_dir():
        return None
    named = root / LATEST
    if named.is_file():
        candidate = root / named.read_text().strip()
        if (candidate / COMPLETE).is_file():
            return candidate
    complete = _complete_checkpoints(root)
    return complete[-1] if complete else None


#: The non-tensor classes DeepSpeed stores in its checkpoints (module, name): plain data, no code.
DEEPSPEED_DATA_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def deepspeed_safe_globals() -> list[Any]:
    """The DEEPSPEED_DATA_CLASSES that can be imported, for torch.serialization.safe_globals."""
    import importlib

    allowed: list[Any] = []
    for module, name in DEEPSPEED_DATA_CLASSES:
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return allowed


def verify_pickles(folder: Path) -> None:
    """Refuse a checkpoint whose ``.pt`` files hold anything but tensors and plain data.

    Each file is opened with ``torch.load(weights_only=True)``, which rebuilds no object outside
    an allow-list and so never runs code from the file; only then does DeepSpeed load it.
    """
    for path in sorted(folder.glob("*.pt")):
        try:
            with torch.serialization.safe_globals(deepspeed_safe_globals()):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (any failure means: not a plain-data file)
            raise UserError(f"refusing checkpoint file {path}: it holds more than tensors and plain data "
                            f"({unpickling_refusal_reason(error)})") from None


def unpickling_refusal_reason(error: Exception) -> str:
    """The short reason inside torch's long weights-only error (e.g. the global it refused)."""
    text = str(error)
    if "Unsupported global:" in text:
        return text.split("Unsupported global:")[1].split("was not")[0].replace("GLOBAL", "").strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:")[1].split("Check the documentation")[0]
        return " ".join(detail.split()) or type(error).__name__
    return " ".join(text.split())[:200] or type(error).__name__


def load_checkpoint(folder: Path, engine: Any, dist: DistInfo) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]]:
    """Load ``folder`` into ``engine``; returns (step, this rank's state, this rank's RNG states)."""
    from safetensors.torch import load_file

    verify_pickles(folder)
    load_path, client = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint in {folder}")
    rank_file = folder / f"rank-{dist.rank:05d}.json"
    if not rank_file.is_file():
        raise UserError(f"checkpoint {folder} has no state for rank {dist.rank}: was it written with another world size?")
    rng = load_file(str(folder / f"rank-{dist.rank:05d}.rng.safetensors"))
    return int(client["cascade_step"]), json.loads(rank_file.read_text()), rng
