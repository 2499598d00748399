"""CLIP image embeddings: the image tower of an open_clip ``local-dir:`` folder, from local files only.

>>> enc = load_clip_image_encoder("weights/shapes/clip")          # doctest: +SKIP
>>> enc.encode(images)          # images [B, 3, H, W] in [-1, 1] -> [B, E] float32, unit norm

Images are taken as the training loader gives them ([-1, 1]), resized to the tower's input size
if needed (bicubic, antialiased) and normalised with the folder's ``preprocess_cfg`` mean and
std (open_clip's OpenAI defaults when absent), exactly as :mod:`stages.clip_world` trains.
Used by the diffusion prior's training and evaluation, and by the unCLIP decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cascade.errors import UserError


class ClipImageEncoder:
    """A frozen CLIP image tower: ``encode(images [B, 3, H, W] in [-1, 1]) -> [B, E]`` float32."""

    def __init__(self, visual: nn.Module, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 name: str = "") -> None:
        self.visual = visual.eval().requires_grad_(False)
        self.image_size = image_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.name = name

    @property
    def embed_dim(self) -> int:
        """E, the width of the (projected) image embedding."""
        proj = getattr(self.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        return int(self.visual.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> the tower's normalised input [B, 3, S, S] in its dtype."""
        from stages.clip_world import normalise_images

        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"CLIP image encoder wants images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(-1.0, 1.0)
        return normalise_images(x, self.mean, self.std).to(self.dtype)  # [B, 3, S, S]

    def encode(self, images: torch.Tensor, normalize: bool = True, batch_size: int = 512) -> torch.Tensor:
        """Image embeddings [B, E] float32 (unit norm with ``normalize``), computed in chunks."""
        outs = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = self.preprocess(images[start:start + batch_size])
                outs.append(self.visual(x).float())  # [b, E]
        features = torch.cat(outs).clone()  # an ordinary tensor, usable outside inference mode
        return F.normalize(features, dim=-1) if normalize else features


def load_clip_image_encoder(folder: str | Path, *, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu") -> ClipImageEncoder:
    """Load the image tower of an open_clip ``local-dir:`` folder (config JSON + one weights file).

    :raises UserError: on a missing folder or file, or weights that do not match the config.
    """
    from cascade.text.open_clip_encoder import load_local_dir_model
    from stages.clip_world import CLIP_MEAN, CLIP_STD, read_folder_config

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"CLIP folder not found: {path}")
    document = read_folder_config(path)
    if document["model_cfg"].get("vision_cfg", {}).get("timm_model_name"):
        raise UserError(f"{path}: timm image towers are not supported (they may need the hub)")
    model, model_cfg = load_local_dir_model(path)
    preprocess = document.get("preprocess_cfg") or {}
    size = preprocess.get("size", model_cfg["vision_cfg"]["image_size"])
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    visual = model.visual.to(device=torch.device(device), dtype=dtype)
    return ClipImageEncoder(visual, image_size=size, mean=tuple(preprocess.get("mean", CLIP_MEAN)),
                            std=tuple(preprocess.get("std", CLIP_STD)), name=f"clip-image:{path}")
