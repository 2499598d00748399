"""The training step that benchmarks/unet_vs_diffusers.py times: both of its precision modes train,
and the bf16-weights mode keeps fp32 master weights whose rounding is the network's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from unet_models import UNETS, ours  # noqa: E402


@pytest.mark.parametrize("mode", ["bf16-autocast channels-last", "bf16-weights channels-last"])
def test_a_timed_training_step_updates_fp32_master_weights(mode: str) -> None:
    model = ours(UNETS["dry"])
    step = model.training_step(2, mode)
    net, params, master, _ = model.prepared["train " + mode]
    before = [m.detach().clone() for m in master]
    step()
    step()
    assert all(m.dtype == torch.float32 for m in master)
    moved = sum(not torch.equal(a, m) for a, m in zip(before, master))
    assert moved > len(master) // 2  # most tensors get gradients (zero-initialised outputs need two steps)
    expected = torch.bfloat16 if "bf16-weights" in mode else torch.float32
    assert all(p.dtype == expected for p in net.parameters())
    for p, m in zip(params, master):  # the network computes with the master weights, rounded
        assert torch.equal(p.detach(), m.detach().to(p.dtype))
