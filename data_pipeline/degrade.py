"""Low-resolution conditioning for super-resolution stages, and paired random crops.

A super-resolution stage learns p(x_hi | x_lo, text). Its training pair is made from one
high-resolution image: ``x_lo = blur(downsample(x_hi))``, where

- ``downsample`` is an area (box) average for integer factors, the exact integral of the
  image over each low-res pixel, and an antialiased bilinear filter otherwise;
- ``blur`` is optional: a Gaussian blur with a random sigma per sample, the conditioning
  corruption of DALL-E 2's first upsampler (Ramesh et al. 2022, "Hierarchical
  Text-Conditional Image Generation with CLIP Latents", Sec. 2.1, after the
  conditioning augmentation of Ho et al. 2021, "Cascaded Diffusion Models").

The largest stage trains on random crops (Imagen trains its 1024 px stage on 256 px crops
of 1024 px images with the matching 64 px crops of the 256 px conditioning):
:func:`paired_random_crop` crops both resolutions at the same place.

All tensors are float ``[..., C, H, W]`` (any leading dims, e.g. [B, C, H, W] or
[F, C, H, W] for a clip) in whatever range the caller uses ([-1, 1] in the loader).
Randomness comes only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StageSizes:
    """What one stage trains on.

    :param size: side of the stage's output image (e.g. 64, 256, 1024).
    :param low_res: side of the conditioning image of a super-resolution stage (None: base stage).
    :param crop: train on random ``crop`` px windows of the ``size`` px image (and the matching
        low-res window); None: the whole image.
    :param blur_sigma: (low, high) random Gaussian blur of the low-res image, in low-res px.
    :param frames: clips of this many frames instead of images (None: images).
    """

    size: int
    low_res: int | None = None
    crop: int | None = None
    blur_sigma: tuple[float, float] | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or (self.frames is not None and self.frames < 1):
            raise ValueError(f"bad stage sizes {self}")
        if self.low_res is not None and not 0 < self.low_res < self.size:
            raise ValueError(f"low_res must be in (0, size), got {self.low_res} for size {self.size}")
        if self.crop is not None:
            scale = self.size // self.low_res if self.low_res else 1
            if not 0 < self.crop <= self.size or (self.low_res and (self.size % self.low_res or self.crop % scale)):
                raise ValueError(f"crop {self.crop} must fit in {self.size} and be a multiple of the SR factor")


def to_stage(x: torch.Tensor, stage: StageSizes, *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Centre-crop ``x`` [..., C, H, W] to a square, resize it to ``stage.size``, make the
    low-res conditioning and the random crop the stage asks for.

    ``min(H, W)`` must be at least ``stage.size`` (images are never upsampled).
    :return: (target [..., C, S, S], low-res [..., C, s, s] or None), S = crop or size,
        s = S * low_res / size.
    """
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[..., top: top + side, left: left + side]  # (..., C, side, side)
    if side != stage.size:
        x = downsample(x, stage.size)  # (..., C, size, size)
    lo = None
    if stage.low_res is not None:
        lo = make_low_res(x, stage.low_res, blur_sigma=stage.blur_sigma, generator=generator)  # (..., C, lr, lr)
        if stage.crop is not None:
            x, lo = paired_random_crop(x, lo, stage.crop, generator=generator)
        lo = lo.contiguous()
    elif stage.crop is not None:
        x = random_crop(x, stage.crop, generator=generator)
    return x.contiguous(), lo


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``x`` [..., C, H, W] to [..., C, size, size] with an antialiased filter.

    Area averaging when H and W are integer multiples of ``size``; otherwise bilinear
    with antialiasing (a triangle filter widened by the scale factor).
    """
    *lead, channels, height, width = x.shape
    flat = x.reshape(-1, channels, height, width)  # (N, C, H, W)
    if height % size == 0 and width % size == 0:
        out = F.interpolate(flat, size=(size, size), mode="area")  # (N, C, size, size)
    else:
        out = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.reshape(*lead, channels, size, size)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``exp(-t^2 / (2 sigma^2))`` on t in [-r, r], r = ceil(3 sigma); shape [2r+1]."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` [..., C, H, W] with reflect padding; sigma in pixels (0 = identity)."""
    if sigma <= 0:
        return x
    *lead, channels, height, width = x.shape
    kernel = gaussian_kernel(sigma).to(x.dtype)
    radius = kernel.numel() // 2
    if radius >= min(height, width):  # reflect padding needs radius < size
        radius = min(height, width) - 1
        kernel = kernel[kernel.numel() // 2 - radius: kernel.numel() // 2 + radius + 1]
        kernel = kernel / kernel.sum()
    flat = x.reshape(-1, 1, height, width)  # (N*C, 1, H, W)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")  # (N*C, 1, H+2r, W+2r)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))  # (N*C, 1, H+2r, W)
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))  # (N*C, 1, H, W)
    return flat.reshape(*lead, channels, height, width)


def make_low_res(hi: torch.Tensor, size: int, *, blur_sigma: tuple[float, float] | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The conditioning image of a super-resolution pair.

    :param hi: the high-res target [..., C, H, W].
    :param size: the low-res side.
    :param blur_sigma: (low, high): blur with sigma ~ U(low, high) low-res pixels after
        downsampling; None for no blur. One sigma per call (a clip's frames share it).
    :param generator: the source of the random sigma.
    :return: [..., C, size, size], same dtype and range as ``hi``.
    """
    lo = downsample(hi, size)
    if blur_sigma is not None:
        low, high = blur_sigma
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        lo = gaussian_blur(lo, low + (high - low) * u)
    return lo


def paired_random_crop(hi: torch.Tensor, lo: torch.Tensor, crop: int, *,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``hi`` [..., C, H, H] to ``crop`` px and ``lo`` [..., C, h, h] to the same region.

    The scale s = H / h must be an integer and ``crop`` a multiple of s; the crop's corner
    is drawn uniformly on the low-res grid, so the low-res crop (crop / s px) covers
    exactly the high-res crop. Returns ([..., C, crop, crop], [..., C, crop/s, crop/s]).
    """
    big, small = hi.shape[-1], lo.shape[-1]
    if big % small or crop % (big // small) or not 0 < crop <= big:
        raise ValueError(f"cannot pair a {crop} px crop of {big} px with {small} px")
    scale = big // small
    lo_crop = crop // scale
    y, x = (int(v) for v in torch.randint(0, small - lo_crop + 1, (2,), generator=generator))
    hi_out = hi[..., y * scale: y * scale + crop, x * scale: x * scale + crop]
    lo_out = lo[..., y: y + lo_crop, x: x + lo_crop]
    return hi_out, lo_out


def random_crop(x: torch.Tensor, crop: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly placed ``crop`` x ``crop`` window of ``x`` [..., C, H, W]."""
    height, width = x.shape[-2:]
    y = int(torch.randint(0, height - crop + 1, (), generator=generator))
    x0 = int(torch.randint(0, width - crop + 1, (), generator=generator))
    return x[..., y: y + crop, x0: x0 + crop]
