"""Times for training and for the network: uniform draws over a schedule, and the network's time input.

Every network of the project sees its noise level as a time in [0, 1000), whatever the schedule's
own units (a DDPM step index of a T-step schedule, or t in [0, 1]), so one embedding serves all.
"""

from __future__ import annotations

import torch

from cascade.diffusion.schedules import DiscreteSchedule, NoiseSchedule

NETWORK_TIME_SCALE = 1000.0


def network_time(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Schedule times [B] (float64) -> the network's time input [B] float32 in [0, 1000)."""
    span = schedule.t_max + (1.0 if isinstance(schedule, DiscreteSchedule) else 0.0)
    return (t.to(torch.float64) * (NETWORK_TIME_SCALE / span)).float()


def uniform_times(schedule: NoiseSchedule, batch: int, generator: torch.Generator | None,
                  max_fraction: float = 1.0) -> torch.Tensor:
    """[B] float64 times drawn uniformly from the first ``max_fraction`` of the schedule: integer steps
    of a discrete schedule, reals otherwise."""
    if isinstance(schedule, DiscreteSchedule):
        high = max(1, int(round(max_fraction * schedule.num_steps)))
        return torch.randint(0, high, (batch,), generator=generator).to(torch.float64)
    return torch.rand(batch, generator=generator, dtype=torch.float64) * max_fraction
