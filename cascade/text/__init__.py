"""Text encoders behind one interface: prompts -> token embeddings, mask, pooled embedding.

>>> from cascade.text import load_text_encoder          # doctest: +SKIP
>>> enc = load_text_encoder("t5:/models/t5-v1_1-xl", dtype="bf16", max_length=128)
>>> emb = enc.encode(["three glass spheres falling into the ocean at sunset"])
>>> emb.tokens.shape, emb.mask.shape, emb.pooled.shape    # [B, L, D], [B, L], [B, D_pooled]

Specs (see :mod:`cascade.text.spec`): ``t5:DIR``, ``hf:DIR``, ``clip:local-dir:DIR``,
``clip:ARCH:WEIGHTS_FILE``. Importing this package loads no model and imports neither
``open_clip`` nor ``transformers``; loading reads local files only.
"""

from cascade.text.base import TextEmbedding, TextEncoder
from cascade.text.cache import CachedTextEncoder
from cascade.text.prompts import TruncationWarning, validate_prompts
from cascade.text.spec import ENCODER_KINDS, EncoderSpec, load_text_encoder, parse_dtype, parse_spec

__all__ = [
    "ENCODER_KINDS",
    "CachedTextEncoder",
    "EncoderSpec",
    "TextEmbedding",
    "TextEncoder",
    "TruncationWarning",
    "load_text_encoder",
    "parse_dtype",
    "parse_spec",
    "validate_prompts",
]
