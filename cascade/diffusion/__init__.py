"""The mathematics of diffusion: schedules, the forward process, parametrisations, losses.

Plain functions and small classes over tensors; no network code lives here.
"""

from cascade.diffusion.forward import q_posterior, q_sample, step_coefficients
from cascade.diffusion.parametrization import PREDICTIONS, from_x0, to_x0, training_target
from cascade.diffusion.schedules import (
    SCHEDULE_NAMES,
    ContinuousCosineSchedule,
    DiscreteSchedule,
    NoiseSchedule,
    build_schedule,
    cosine_betas,
    linear_betas,
)

__all__ = [
    "PREDICTIONS",
    "SCHEDULE_NAMES",
    "ContinuousCosineSchedule",
    "DiscreteSchedule",
    "NoiseSchedule",
    "build_schedule",
    "cosine_betas",
    "from_x0",
    "linear_betas",
    "q_posterior",
    "q_sample",
    "step_coefficients",
    "to_x0",
    "training_target",
]
