"""The EMA of the weights: its warm-up against the closed form, and its state through a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cascade.training.ema import EMA, warmed_up_decay


def test_decay_warms_up_then_holds() -> None:
    assert warmed_up_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmed_up_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmed_up_decay(0.999, 10**6) == 0.999


def test_average_of_fixed_weights_matches_the_closed_form(tmp_path: Path) -> None:
    """Weights jump from w0 to w1 and stay: after steps 1..n the average holds prod(d_k) of w0."""
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.add_(1.0)
    w1 = model.weight.detach().clone()
    kept = 1.0
    for step in range(1, 301):
        ema.update(model, step)
        kept *= warmed_up_decay(0.999, step)
    # prod_{k=1..n} (1 + k) / (10 + k) telescopes to (n + 1)! 10! / (n + 10)! = 10! / ((n + 2) ... (n + 10))
    closed = 3628800.0
    for factor in range(302, 311):
        closed /= factor
    assert kept == pytest.approx(closed, rel=1e-9)
    torch.testing.assert_close(ema.shadow["weight"], kept * w0 + (1 - kept) * w1, rtol=1e-5, atol=1e-6)
    assert kept < 1e-15  # nothing of the random start is left after 300 steps

    ema.save(tmp_path / "ema.safetensors")
    again = EMA(nn.Linear(3, 2), decay=0.999)
    again.load(tmp_path / "ema.safetensors")
    torch.testing.assert_close(again.shadow["weight"], ema.shadow["weight"], rtol=0, atol=0)
    target = nn.Linear(3, 2)
    again.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])
