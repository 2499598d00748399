"""The unCLIP path: text -> prior -> CLIP image embedding -> decoder, through the user-facing commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import CASCADE, ROOT, run_command


def test_render_through_the_prior(tiny_unclip_cascade: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        run_command(CASCADE + ["render", "--prompt", "a red sphere on the grass", "--seed", "4",
                               "--checkpoint", str(tiny_unclip_cascade), "--out", str(tmp_path / f"{name}.png")], ROOT)
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert a.shape == (16, 16, 3) and np.array_equal(a, b)


def test_the_decoder_sees_the_prior_embedding(tiny_unclip_cascade: Path) -> None:
    from cascade.pipeline import Cascade

    cascade = Cascade.load(tiny_unclip_cascade)
    settings = cascade.settings()
    text = cascade.encode_text(["a red sphere", "two blue cubes"])
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    with torch.inference_mode():
        embed = cascade.image_embedding(text, generators, settings)
    assert embed.shape == (2, 16) and torch.allclose(embed.norm(dim=-1), torch.ones(2), atol=1e-5)
    decoder = cascade.stages[0].network
    assert decoder.image_embed is not None and decoder.image_context is not None
