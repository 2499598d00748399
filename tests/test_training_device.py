"""The training loop's hand-over to the engine's device: what moves and what stays on the CPU.

A GPU run (``configs/shapes/video64-gpu.yaml``) trains through the same path; here the ``meta``
device stands in for it, so the test checks placement without a GPU.
"""

from __future__ import annotations

import torch

from cascade.diffusion.losses import simple_loss
from cascade.training.loop import on_device
from stages.conditioning import Conditioning


def test_tensors_and_conditioning_move_to_the_engine_device_and_the_generator_stays() -> None:
    generator = torch.Generator().manual_seed(0)
    cond = Conditioning(text_tokens=torch.zeros(2, 4, 8), text_mask=torch.ones(2, 4, dtype=torch.bool))
    moved = on_device({"x0": torch.zeros(2, 3, 8, 8), "cond": cond, "generator": generator, "steps": 3}, torch.device("meta"))
    assert moved["x0"].device.type == "meta"
    assert moved["cond"].text_tokens.device.type == "meta" and moved["cond"].text_mask.device.type == "meta"
    assert moved["cond"].pooled is None
    assert moved["generator"] is generator and moved["steps"] == 3


def test_the_loss_takes_schedule_values_from_the_cpu_to_the_data_device() -> None:
    x0 = torch.zeros(2, 3, 4, 4, device="meta")
    alpha = torch.tensor([0.8, 0.6], dtype=torch.float64)  # schedule math stays on the CPU in float64
    sigma = (1 - alpha**2).sqrt()
    loss = simple_loss(x0, x0, x0, alpha, sigma, (alpha**2 / sigma**2).log(), "v", "min_snr")
    assert loss.shape == (2,) and loss.device.type == "meta"
