"""Super-resolution fidelity on the shapes world: each SR stage refines the true low-res render, and
PSNR / SSIM against the true high-res render are compared with bicubic upsampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cascade.errors import UserError
from cascade.images import from_uint8


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images [N, 3, H, W] in [-1, 1], on the 0..255 scale."""
    mse = ((a - b) * 127.5).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
    "valid" borders, mean over channels) of images [N, C, H, W] in [-1, 1], on the 0..255 scale."""
    a, b = (a.double() + 1) * 127.5, (b.double() + 1) * 127.5
    channels = a.shape[1]
    window = _gaussian_window().double().expand(channels, 1, 11, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1).float()


def bicubic(low: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def sr_stage_indices(cascade: Any, sizes: Sequence[int] = ()) -> list[int]:
    """Indices into ``cascade.stages`` of the SR stages making ``sizes`` (all of them when empty)."""
    made = cascade.sizes[1:]
    unknown = [size for size in sizes if size not in made]
    if unknown:
        have = ", ".join(map(str, made)) or "none"
        raise UserError(f"--sr {','.join(map(str, unknown))}: this cascade's super-resolution stages make {have} px")
    return [index for index, size in enumerate(made, start=1) if not sizes or size in sizes]


def sr_fidelity(cascade: Any, split: str = "eval", n: int = 50, batch_size: int = 8, settings: Any = None,
                stages: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """For each SR stage (or those at ``stages``, indices into ``cascade.stages``): mean PSNR and SSIM
    of the stage and of bicubic upsampling, from true low-res renders of the first ``n`` scenes."""
    import numpy as np

    from data_pipeline.world import caption, render_image, sample_scene

    settings = settings or cascade.settings()
    scenes = [sample_scene(split, seed) for seed in range(n)]
    captions = [caption(scene, style="compact", seed=scene.seed) for scene in scenes]
    results = []
    for index in stages if stages is not None else range(1, len(cascade.stages)):
        low_size, size = cascade.stages[index - 1].config.resolution, cascade.stages[index].config.resolution
        scores = {"stage": [], "bicubic": []}
        for start in range(0, n, batch_size):
            chunk = scenes[start:start + batch_size]
            low = from_uint8(np.stack([render_image(s, low_size) for s in chunk]))
            truth = from_uint8(np.stack([render_image(s, size) for s in chunk]))
            refined = cascade.refine(index, captions[start:start + batch_size], low,
                                     [start + i for i in range(len(chunk))], settings).float()
            for name, image in (("stage", refined), ("bicubic", bicubic(low, size))):
                scores[name].append(torch.stack([psnr(image, truth), ssim(image, truth)], dim=1))
        stage, cubic = torch.cat(scores["stage"]).mean(0), torch.cat(scores["bicubic"]).mean(0)
        results.append({
            "from": low_size, "to": size, "n": n,
            "psnr": float(stage[0]), "ssim": float(stage[1]),
            "bicubic_psnr": float(cubic[0]), "bicubic_ssim": float(cubic[1]),
            "psnr_gain_db": float(stage[0] - cubic[0]),
        })
    return results
