"""Release folders: what ``cascade export`` writes and what rendering loads.

A release of one diffusion stage is a folder::

    config.yaml          the StageConfig (typed; unknown keys are an error)
    model.safetensors    the trained weights (left out by ``--ema-only``)
    ema.safetensors      their exponential moving average (what rendering uses by default)
    release.json         {"kind": "diffusion", "step": N, "dtype": "bf16"}

Only safetensors are read here: a release can hold no code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cascade.config import dump_yaml, load_yaml
from cascade.errors import UserError
from cascade.fileio import atomic_output, atomic_write_text
from cascade.stage import DiffusionStage, StageConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _run_and_checkpoint(source: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) from either of them."""
    from cascade.training.checkpoint import COMPLETE, find_latest

    source = Path(source)
    if not source.exists():
        raise UserError(f"checkpoint {str(source)!r} does not exist")
    if (source / COMPLETE).is_file():  # a checkpoint folder: run/checkpoints/step-N
        return source.parent.parent, source
    checkpoint = find_latest(source / "checkpoints")
    if checkpoint is None:
        raise UserError(f"{str(source)!r} holds no complete training checkpoint")
    return source, checkpoint


def _module_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DeepSpeed checkpoint, read without unpickling code."""
    from cascade.training.checkpoint import deepspeed_safe_globals, unpickling_refusal_reason

    path = checkpoint / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise UserError(f"{checkpoint} has no model states ({path.name})")
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise UserError(f"refusing {path}: it holds more than tensors and plain data "
                        f"({unpickling_refusal_reason(error)})") from None
    return state["module"]


def export_run(source: Path, out: Path, dtype: str = "bf16", ema_only: bool = False) -> Path:
    """Write the release folder of a diffusion-stage training run (its newest checkpoint, or the one given).

    ``ema_only`` writes just the EMA weights that rendering loads: half the bytes, for shipping.
    """
    from safetensors.torch import load_file, save_file

    from cascade.training.config import TrainConfig

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (choose from: {', '.join(DTYPES)})")
    run, checkpoint = _run_and_checkpoint(source)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} has no config.yaml: is it a run folder of train_stage.py?")
    config = load_yaml(TrainConfig, run / "config.yaml")
    releases = {"ema": load_file(str(checkpoint / "ema.safetensors"))}
    if not ema_only:
        releases["model"] = _module_weights(checkpoint)
    cast = DTYPES[dtype]
    out.mkdir(parents=True, exist_ok=True)
    if ema_only and (out / "model.safetensors").exists():
        (out / "model.safetensors").unlink()  # a stale one from an earlier export would not match the EMA
    for name, weights in releases.items():
        tensors = {k: v.to(cast).contiguous() if v.is_floating_point() else v.contiguous() for k, v in weights.items()}
        with atomic_output(out / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
    atomic_write_text(out / "config.yaml", dump_yaml(config.stage))
    step = int((checkpoint / "COMPLETE").read_text().strip() or 0)
    atomic_write_text(out / "release.json", json.dumps({"kind": "diffusion", "step": step, "dtype": dtype,
                                                        "source": str(checkpoint)}, indent=1) + "\n")
    return out


def read_release_info(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "release.json"
    if not path.is_file():
        raise UserError(f"{str(folder)!r} is not a release folder (no release.json): make one with `cascade export`")
    return json.loads(path.read_text())


def load_stage(folder: Path, *, ema: bool = True, dtype: torch.dtype = torch.float32) -> DiffusionStage:
    """A diffusion stage from its release folder, its weights checked against its config."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_release_info(folder)
    if info.get("kind") != "diffusion":
        raise UserError(f"{folder} holds a {info.get('kind')!r} release, not a diffusion stage")
    config = load_yaml(StageConfig, folder / "config.yaml")
    weights_path = folder / ("ema.safetensors" if ema else "model.safetensors")
    if not weights_path.is_file():
        hint = " (the release was exported with --ema-only)" if not ema and (folder / "ema.safetensors").is_file() else ""
        raise UserError(f"missing weights file {weights_path}{hint}")
    stage = DiffusionStage(config)
    weights = load_file(str(weights_path))
    expected = stage.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise UserError(
            f"the weights in {weights_path} do not match {folder / 'config.yaml'} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape; e.g. {first!r})"
        )
    stage.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
    return stage.to(dtype).eval().requires_grad_(False)
