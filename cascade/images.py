"""Tensors to pictures and pictures to files: PNG (with text chunks), GIF and MP4, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cascade.errors import UserError
from cascade.fileio import atomic_output


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [..., 3, H, W] -> uint8 [..., H, W, 3]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def from_uint8(image: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3).float() / 127.5 - 1.0


def grid(images: list[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 images [H, W, 3] (same size) -> one uint8 image with them in rows of ``columns``."""
    if not images:
        raise ValueError("no images to arrange")
    columns = columns or len(images)
    rows = (len(images) + columns - 1) // columns
    h, w = images[0].shape[:2]
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    return canvas


def save_png(path: Path, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write a uint8 [H, W, 3] image as PNG with ``text`` as tEXt chunks, through a temp file."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)


VIDEO_SUFFIXES = (".gif", ".mp4")


def gif_durations(count: int, fps: int) -> list[int]:
    """Per-frame GIF delays in ms that sum to exactly ``count / fps`` s (to GIF's 10 ms units).

    GIF stores whole centiseconds: 8 fps as 12.5 cs a frame would round every frame the same way
    and drift; rounding the frame boundaries instead gives 120, 130, 120, 130 ... ms.
    """
    edges = [round(k * 100 / fps) for k in range(count + 1)]  # centiseconds
    return [10 * (b - a) for a, b in zip(edges, edges[1:])]


def save_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write uint8 frames [F, H, W, 3] as GIF (looping) or MP4 (H.264 through imageio's ffmpeg)."""
    import imageio.v3 as iio

    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise UserError(f"unknown video extension {suffix!r} for {path} (choose from: .gif, .mp4)")
    if not 1 <= fps <= 120:
        raise UserError(f"fps must be between 1 and 120, got {fps}")
    with atomic_output(path) as tmp:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=gif_durations(len(frames), fps), loop=0)
        else:
            iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
