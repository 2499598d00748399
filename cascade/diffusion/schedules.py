"""Variance-preserving noise schedules, computed in float64.

Every schedule describes ``x_t = alpha(t) * x_0 + sigma(t) * eps`` with
``alpha(t)^2 + sigma(t)^2 = 1`` and a log signal-to-noise ratio
``log_snr(t) = log(alpha^2 / sigma^2)`` that decreases with t. Because
``alpha^2 = sigmoid(log_snr)``, the log-SNR alone fixes the schedule
(Kingma et al. 2021, "Variational Diffusion Models", eq. 3-4).

Time is in the schedule's own units:

- :class:`DiscreteSchedule` (a model trained with T steps): t in [0, T-1], the
  DDPM step index; fractional t interpolates the log-SNR linearly between steps,
  so samplers may use any subset of steps, or times between them (Karras sigmas).
- :class:`ContinuousCosineSchedule`: t in [0, 1], closed form.

Larger t always means more noise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from cascade.errors import UserError, choice_error

F64 = torch.float64
SPACINGS = ("leading", "trailing", "linspace")


def _as_f64(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=F64)


class NoiseSchedule(ABC):
    """A variance-preserving schedule. All tensors returned are float64."""

    #: The least and the most noisy time the schedule defines.
    t_min: float
    t_max: float

    @abstractmethod
    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """log(alpha^2 / sigma^2) at time t (any shape), decreasing in t."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        """The inverse of :meth:`log_snr` (clamped to [t_min, t_max])."""

    @abstractmethod
    def spaced_timesteps(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """``steps`` model times, most noisy first: the times a sampler evaluates the model at.

        After the last of them a sampler steps to the clean endpoint (alpha = 1, sigma = 0).
        """

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)), each the shape of t; alpha^2 = sigmoid(log_snr)."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        return self.alpha_sigma(t)[1]

    def validate_steps(self, steps: int) -> None:
        """Raise a one-line :class:`UserError` unless ``steps`` is a usable number of steps."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps must be a whole number >= 1, got {steps!r}")


# ---------------------------------------------------------------------------- discrete


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM's linear betas (Ho et al. 2020, section 4): ``linspace(1e-4, 2e-2, T)`` in float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=F64)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM's f(t) = cos(((t + s) / (1 + s)) * pi / 2)^2 for t in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    return torch.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """betas_t = min(1 - alpha_bar(t/T) / alpha_bar((t-1)/T), 0.999) (Nichol & Dhariwal 2021, eq. 17 and below)."""
    grid = torch.arange(num_steps + 1, dtype=F64) / num_steps
    f = cosine_alpha_bar(grid, s)
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


class DiscreteSchedule(NoiseSchedule):
    """A schedule of T steps given by its betas; t is the step index in [0, T-1].

    ``alphas_cumprod[i] = prod_{j <= i} (1 - betas[j])``; at integer t, alpha and sigma
    are read from it exactly, and between integers the log-SNR is interpolated linearly.
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = _as_f64(betas).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserError("betas must hold at least 2 values, each in (0, 1)")
        self.betas = betas
        self.num_steps = betas.numel()
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.log_snr_table = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)
        self.t_min = 0.0
        self.t_max = float(self.num_steps - 1)

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = t.clamp(self.t_min, self.t_max)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        return t, lo, t - lo

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        t, lo, frac = self._split(_as_f64(t))
        table = self.log_snr_table
        return table[lo] + frac * (table[lo + 1] - table[lo])

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_f64(t)
        lam = self.log_snr(t)
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        on_grid = t == t.round()
        index = t.round().long().clamp(0, self.num_steps - 1)
        abar = self.alphas_cumprod[index]
        return torch.where(on_grid, abar.sqrt(), alpha), torch.where(on_grid, (1 - abar).sqrt(), sigma)

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        lam = _as_f64(log_snr)
        ascending = -self.log_snr_table  # increasing in t
        x = (-lam).clamp(ascending[0], ascending[-1])
        hi = torch.searchsorted(ascending, x.contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        frac = (x - ascending[lo]) / (ascending[hi] - ascending[lo])
        return lo.to(F64) + frac

    def validate_steps(self, steps: int) -> None:
        super().validate_steps(steps)
        if steps > self.num_steps:
            raise UserError(f"steps must be between 1 and {self.num_steps} for this schedule, got {steps}")

    def spaced_timesteps(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """Respaced integer timesteps, most noisy first (Lin et al. 2024, "Common Diffusion
        Noise Schedules and Sample Steps are Flawed", table 2):

        - ``leading``: ``arange(steps) * (T // steps)``, reversed (DDPM's and DDIM's original choice);
        - ``trailing``: ``round(arange(T, 0, -T / steps)) - 1``: always starts at T-1;
        - ``linspace``: ``round(linspace(0, T-1, steps + 1))`` reversed, without the final 0
          (DPM-Solver's choice: the last step lands on the clean image).
        """
        self.validate_steps(steps)
        T = self.num_steps
        if spacing == "leading":
            t = (torch.arange(steps, dtype=F64) * (T // steps)).flip(0)
        elif spacing == "trailing":
            t = torch.round(torch.arange(T, 0, -T / steps, dtype=F64)) - 1
        elif spacing == "linspace":
            t = torch.round(torch.linspace(0, T - 1, steps + 1, dtype=F64)).flip(0)[:-1]
        else:
            raise choice_error("spacing", spacing, SPACINGS)
        return t


# ---------------------------------------------------------------------------- continuous


class ContinuousCosineSchedule(NoiseSchedule):
    """The cosine schedule in continuous time with an optional resolution shift.

    ``log_snr(t) = -2 log tan(a t + b) + 2 log(base / resolution)`` for t in [0, 1], where a and b
    make the unshifted log-SNR run from ``log_snr_max`` (t = 0) to ``log_snr_min`` (t = 1).
    With a = pi/2, b = 0 this is the cosine schedule alpha = cos(pi t / 2) (s = 0). The shift
    makes a high-resolution image as noisy as a ``base``-pixel one at the same t, because
    neighbouring pixels of a large image average the noise away (Hoogeboom et al. 2023,
    "simple diffusion", section 3.1, "shifted cosine").
    """

    def __init__(
        self,
        log_snr_min: float = -15.0,
        log_snr_max: float = 15.0,
        resolution: int | None = None,
        base_resolution: int = 64,
    ) -> None:
        if not log_snr_min < log_snr_max:
            raise UserError(f"log_snr_min ({log_snr_min}) must be below log_snr_max ({log_snr_max})")
        if resolution is not None and resolution < 1:
            raise UserError(f"resolution must be a positive number of pixels, got {resolution}")
        self.b = math.atan(math.exp(-log_snr_max / 2))
        self.a = math.atan(math.exp(-log_snr_min / 2)) - self.b
        self.shift = 0.0 if resolution is None else 2 * math.log(base_resolution / resolution)
        self.t_min, self.t_max = 0.0, 1.0

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        t = _as_f64(t).clamp(0.0, 1.0)
        return -2 * torch.log(torch.tan(self.a * t + self.b)) + self.shift

    def t_from_log_snr(self, log_snr: torch.Tensor | float) -> torch.Tensor:
        lam = _as_f64(log_snr) - self.shift
        return ((torch.atan(torch.exp(-lam / 2)) - self.b) / self.a).clamp(0.0, 1.0)

    def validate_steps(self, steps: int) -> None:
        super().validate_steps(steps)
        if steps > 10_000:
            raise UserError(f"steps must be between 1 and 10000 for a continuous schedule, got {steps}")

    def spaced_timesteps(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """``steps`` equally spaced times ``1, 1 - 1/steps, ..., 1/steps`` (any spacing name is
        accepted for symmetry with :class:`DiscreteSchedule`; continuous time has only this one)."""
        self.validate_steps(steps)
        if spacing not in SPACINGS:
            raise choice_error("spacing", spacing, SPACINGS)
        return 1.0 - torch.arange(steps, dtype=F64) / steps


# ---------------------------------------------------------------------------- by name

SCHEDULE_NAMES = ("linear", "cosine", "cosine-continuous", "shifted-cosine")


def build_schedule(
    name: str, num_steps: int = 1000, resolution: int | None = None, base_resolution: int = 64
) -> NoiseSchedule:
    """The schedule called ``name``.

    - ``linear``: DDPM's linear betas over ``num_steps`` steps;
    - ``cosine``: improved DDPM's cosine betas over ``num_steps`` steps;
    - ``cosine-continuous``: the cosine schedule in continuous time;
    - ``shifted-cosine``: the same, shifted for ``resolution`` pixels against ``base_resolution``.
    """
    if name not in SCHEDULE_NAMES:
        raise choice_error("schedule", name, SCHEDULE_NAMES)
    if name in ("linear", "cosine"):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise UserError(f"a discrete schedule needs num_steps >= 2, got {num_steps!r}")
        return DiscreteSchedule(linear_betas(num_steps) if name == "linear" else cosine_betas(num_steps))
    if name == "shifted-cosine":
        if resolution is None:
            raise UserError("the shifted-cosine schedule needs the stage's resolution")
        return ContinuousCosineSchedule(resolution=resolution, base_resolution=base_resolution)
    return ContinuousCosineSchedule()
