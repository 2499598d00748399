"""What a U-Net is conditioned on, besides the noisy input and its time."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Conditioning:
    """Per-sample conditioning of a U-Net call; every field is optional.

    - ``text_tokens`` [B, L, D_text] and ``text_mask`` [B, L] bool (True = a real token);
    - ``text_words`` [B, L, D_words]: the text encoder's first-layer input per token (its word and
      position embeddings, :class:`cascade.text.TextEmbedding`), read by stages with ``text_word_dim``;
    - ``pooled`` [B, D_pooled]: the pooled text embedding, added to the time embedding;
    - ``image_embed`` [B, E]: a CLIP image embedding (unCLIP), added and turned into extra tokens;
    - ``low_res`` [B, C, H, W] (or [B, F, C, H, W]): the low-resolution image already resized to the
      output size (super-resolution stages), and ``aug_level`` [B]: the noise-augmentation time it was
      corrupted with, in the same units as t; ``low_res_clean``: the same resized image before that
      corruption (a stage that predicts a residual adds it to its estimate; the network never sees it);
    - ``first_frame`` [B, 3, H, W]: the clip's first frame, given (video stages with
      ``first_frame_conditioning``: the base draws the frame, the video stage moves it; kept in both
      halves of classifier-free guidance, which then guides the motion by the text);
    - ``drop_text`` / ``drop_image`` [B] bool: use the learned "no condition" values instead
      (conditioning dropout in training; the unconditional half of classifier-free guidance);
    - ``video_mask`` [B] bool: for 5-D input, which samples are clips (False: F independent images).
    """

    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    text_words: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    image_embed: torch.Tensor | None = None
    low_res: torch.Tensor | None = None
    aug_level: torch.Tensor | None = None
    low_res_clean: torch.Tensor | None = None
    first_frame: torch.Tensor | None = None
    drop_text: torch.Tensor | None = None
    drop_image: torch.Tensor | None = None
    video_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Conditioning":
        """The same conditioning with every tensor on ``device``."""
        return replace(self, **{name: (value.to(device) if value is not None else None)
                                for name, value in self.__dict__.items()})

    def doubled_for_guidance(self) -> "Conditioning":
        """[cond; uncond]: every tensor repeated twice along the batch, drop flags True in the second half.

        Used to evaluate the conditional and unconditional predictions in one batched forward.
        """

        def twice(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else torch.cat([value, value])

        present = [v for v in (getattr(self, n) for n in self.__dataclass_fields__) if v is not None]
        if not present:
            raise ValueError("an empty Conditioning cannot be doubled")
        batch, device = present[0].shape[0], present[0].device

        def flags(existing: torch.Tensor | None) -> torch.Tensor:
            first = torch.zeros(batch, dtype=torch.bool, device=device) if existing is None else existing
            return torch.cat([first, torch.ones(batch, dtype=torch.bool, device=device)])

        fields = {name: twice(getattr(self, name)) for name in self.__dataclass_fields__}
        fields["drop_text"] = flags(self.drop_text)
        fields["drop_image"] = flags(self.drop_image)
        return replace(self, **fields)
