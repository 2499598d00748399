"""The small CLIP of the shapes world: an open_clip ``CLIP`` (ViT image tower at 64 px, text transformer).

It is trained from scratch on world shards with open_clip's contrastive loss (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision", Fig. 3: symmetric
cross-entropy over the cosine-similarity logits, scaled by a learned temperature), and exported
as an open_clip ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``)
that :func:`cascade.text.load_text_encoder` (``clip:local-dir:DIR``) and
:func:`cascade.clip_image.load_clip_image_encoder` load.

Images enter as the loader gives them, [B, 3, H, W] in [-1, 1], and are mapped to open_clip's
input (the OpenAI mean / std normalisation of [0, 1] pixels) by :func:`normalise_images`.

Nothing is imported from open_clip at import time (configs load without it).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: open_clip's default (OpenAI) normalisation of [0, 1] RGB pixels.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: open_clip clamps the learned temperature at 100 (the logit scale at log 100).
MAX_LOGIT_SCALE = math.log(100.0)
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


@dataclass(frozen=True)
class ClipModelConfig:
    """A small open_clip CLIP (ViT image tower + causal text transformer).

    ``context_length`` must hold the world's longest caption with its start and end tokens
    (33 tokens for the longest clip caption, 30 for images). The text vocabulary is open_clip's
    BPE (49,408 rows); only the world's ~100 words are ever trained.

    Training options (see :mod:`cascade.training.world_captions`): ``recaption_prob``, the
    probability that a shapes-world sample's caption is replaced by a fresh caption of its scene;
    ``hard_negative_weight``, the weight of the hard-negative term of :class:`ClipContrastive`
    (0: plain CLIP loss).
    """

    embed_dim: int = 192
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    vision_head_width: int = 32
    text_width: int = 192
    text_layers: int = 4
    text_heads: int = 6
    context_length: int = 40
    vocab_size: int = 49408
    init_logit_scale: float = math.log(1 / 0.07)
    recaption_prob: float = 0.0
    hard_negative_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_head_width or self.text_width % self.text_heads:
            raise ValueError("vision_width must divide by vision_head_width and text_width by text_heads")
        if self.context_length < 8:
            raise ValueError(f"context_length must be >= 8, got {self.context_length}")
        if not 0.0 <= self.recaption_prob <= 1.0:
            raise ValueError(f"recaption_prob must be between 0 and 1, got {self.recaption_prob}")
        if self.hard_negative_weight < 0:
            raise ValueError(f"hard_negative_weight must be >= 0, got {self.hard_negative_weight}")

    def model_cfg(self) -> dict[str, Any]:
        """The open_clip ``model_cfg`` dict: ``open_clip.CLIP(**cfg)`` builds the model."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                           "patch_size": self.patch_size, "head_width": self.vision_head_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers},
        }


#: Named presets: the shapes-world default and a tiny one for tests.
CLIP_PRESETS: dict[str, ClipModelConfig] = {
    "world-64": ClipModelConfig(),
    "tiny": ClipModelConfig(embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=1,
                            vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=40),
}


def build_clip(config: ClipModelConfig) -> nn.Module:
    """A randomly initialised ``open_clip.CLIP`` of ``config`` (uses the global torch RNG)."""
    import open_clip

    # A [1] logit scale (not a 0-d tensor, which DeepSpeed cannot broadcast in bf16); exported as 0-d.
    return open_clip.CLIP(**config.model_cfg(), init_logit_scale=config.init_logit_scale, nonscalar_logit_scale=True)


def clip_tokenizer(context_length: int) -> Any:
    """open_clip's bundled BPE tokenizer (offline): ``tok(texts) -> LongTensor [B, context_length]``."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def math_attention_on_cpu(device: torch.device) -> contextlib.AbstractContextManager:
    """The MATH kernel of ``scaled_dot_product_attention`` on the CPU (no change elsewhere).

    Measured here (torch 2.14.1, bf16, 1 thread, sequences of 40-65 tokens): the CPU flash
    kernel's backward takes ~75 ms per call against ~7 ms forward, and a CLIP training step is
    ~1.8x faster (forward + backward of the world CLIP, batch 128: 0.66 s against 1.2 s) with the
    MATH kernel, whose backward is plain bf16 matrix products.
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def normalise_images(images: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN,
                     std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> open_clip's input ((x + 1) / 2 - mean) / std, same dtype."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (((images.float() + 1.0) * 0.5 - m) / s).to(images.dtype)  # [B, 3, H, W]


class ClipContrastive(nn.Module):
    """What the training engine runs: ``forward(image, text[, negative, has_negative]) -> [1]`` loss of a batch.

    The loss is open_clip's contrastive loss, plus, when hard-negative captions are given, ``w``
    (``config.hard_negative_weight``) times a hard-negative term: for each image i with a negative,
    the cross-entropy of telling its caption from its negative caption (a caption of the same scene
    with one attribute changed), ``-log softmax([s <I_i, T_i>, s <I_i, N_i>])_0`` with the same
    temperature s (the pairwise form of NegCLIP's extra text negatives, local to each sample).

    The logit scale is clamped at log 100 inside the forward (open_clip clamps the parameter
    after each optimizer step; clamping here has the same effect on the loss and needs no hook).
    With ``world_size > 1`` the features of every rank are gathered (with gradients), so each
    rank's contrastive loss is over the global batch, as in open_clip's distributed training.
    """

    def __init__(self, config: ClipModelConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        import open_clip

        self.config = config
        self.model = build_clip(config)
        distributed = world_size > 1
        self.loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=distributed, rank=rank, world_size=world_size)

    def features(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image features [B, E] (from images in [-1, 1]) and unit text features [B, E] (from token ids)."""
        image_features = self.model.encode_image(normalise_images(image), normalize=True)  # [B, E]
        text_features = self.model.encode_text(text, normalize=True)  # [B, E]
        return image_features, text_features

    def forward(self, image: torch.Tensor, text: torch.Tensor, negative: torch.Tensor | None = None,
                has_negative: torch.Tensor | None = None) -> torch.Tensor:
        """:param image: [B, 3, H, W] in [-1, 1]. :param text: [B, context_length] token ids.
        :param negative: [B, context_length] hard-negative token ids, used where ``has_negative`` [B] is True.
        :returns: [1]."""
        batch = text.shape[0]
        all_text = text if negative is None else torch.cat([text, negative])  # [B or 2B, ctx]
        with math_attention_on_cpu(image.device):
            image_features, text_features = self.features(image, all_text)  # [B, E], [B or 2B, E]
        scale = self.model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().float()  # [1], temperature^-1
        image_features, text_features = image_features.float(), text_features.float()
        loss = self.loss(image_features, text_features[:batch], scale)
        if negative is not None and self.config.hard_negative_weight > 0:
            positive = (image_features * text_features[:batch]).sum(-1)  # [B]
            wrong = (image_features * text_features[batch:]).sum(-1)  # [B]
            logits = scale * torch.stack([positive, wrong], dim=1)  # [B, 2]
            per_sample = nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=logits.device),
                                                     reduction="none")  # [B]
            mask = torch.ones(batch, device=logits.device) if has_negative is None else has_negative.float()
            loss = loss + self.config.hard_negative_weight * (per_sample * mask).sum() / mask.sum().clamp_min(1)
        return loss.reshape(1)


def export_clip(model: nn.Module, config: ClipModelConfig, folder: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``model`` (an ``open_clip.CLIP`` of ``config``) as an open_clip ``local-dir:`` folder.

    ``open_clip_config.json`` holds ``model_cfg`` and ``preprocess_cfg`` (mean, std, size);
    ``open_clip_model.safetensors`` the weights in ``dtype`` (bf16 halves the size; the
    loaders cast back to their own dtype). Each file is written atomically.
    """
    from safetensors.torch import save

    from cascade.fileio import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    for key in ("logit_scale", "logit_bias"):  # open_clip's own layout: 0-d scalars
        if key in state and state[key].numel() == 1:
            state[key] = state[key].reshape(())
    preprocess = {"size": config.image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    document = {"model_cfg": config.model_cfg(), "preprocess_cfg": preprocess}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(document, indent=2) + "\n")
    return folder


def read_folder_config(folder: Path) -> dict[str, Any]:
    """The parsed ``open_clip_config.json`` of a ``local-dir:`` folder."""
    from cascade.errors import UserError

    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"no {CONFIG_FILE} in {folder}: not an open_clip local-dir folder")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if "model_cfg" not in document:
        raise UserError(f"{path} has no 'model_cfg'")
    return document
