"""Tiny, randomly initialised text encoders written to disk, for tests and smoke runs.

They are built with the real libraries and saved in the same layouts as real models, so
they load through the user-facing specs: ``t5:DIR`` for :func:`build_tiny_t5`,
``hf:DIR`` for :func:`build_tiny_bert` and ``clip:local-dir:DIR`` for
:func:`build_tiny_open_clip`. Building takes well under a
second each on a CPU and needs no network. Their embeddings carry no meaning.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import torch

_COUNTS = ("one", "two", "three", "four", "five", "six")
_LOOKS = ("red", "blue", "green", "golden", "tiny", "giant", "glass", "wooden")
_THINGS = ("spheres", "cubes", "paper boats", "chairs", "robots", "cats", "lanterns", "teapots")
_ACTIONS = ("falling into", "floating above", "resting beside", "drifting across", "dancing in")
_PLACES = (
    "the ocean at sunset",
    "a snowy forest",
    "a city street at night",
    "a quiet desert",
    "an old library",
    "a field of flowers",
    "the moon",
    "a kitchen table",
)
_ALL = [" ".join(parts) for parts in itertools.product(_COUNTS, _LOOKS, _THINGS, _ACTIONS, _PLACES)]

#: 200 short captions (deterministic, spread over every word above), e.g. "one red spheres
#: falling into the ocean at sunset".
TINY_CAPTIONS: tuple[str, ...] = tuple(_ALL[(i * 7919) % len(_ALL)] for i in range(200))
#: Every word of :data:`TINY_CAPTIONS`, sorted.
TINY_WORDS: tuple[str, ...] = tuple(sorted({w for caption in TINY_CAPTIONS for w in caption.split()}))


def train_sentencepiece(captions: tuple[str, ...] | list[str], vocab_size: int = 200) -> bytes:
    """A unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2); its bytes."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=buffer,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def build_tiny_t5(folder: Path, *, d_model: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny ``T5EncoderModel`` + T5 tokenizer (sentencepiece on :data:`TINY_CAPTIONS`).

    The tokenizer is loaded with ``T5Tokenizer.from_pretrained(folder)`` before it is saved:
    in transformers 5, ``T5Tokenizer(vocab_file=...)`` maps every word to ``<unk>``.
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(train_sentencepiece(TINY_CAPTIONS))
    tokenizer = T5Tokenizer.from_pretrained(str(folder), extra_ids=0, local_files_only=True)
    tokenizer.save_pretrained(str(folder))
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        T5EncoderModel(config).save_pretrained(str(folder))
    return folder


def tiny_open_clip_config(*, width: int = 32, context_length: int = 16, embed_dim: int = 16) -> dict[str, Any]:
    """An open_clip ``model_cfg`` for a CLIP with a 2-layer text transformer and a 1-layer ViT."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }


def build_tiny_open_clip(
    folder: Path,
    *,
    width: int = 32,
    context_length: int = 16,
    embed_dim: int = 16,
    seed: int = 0,
    weights_name: str = "open_clip_model.safetensors",
) -> Path:
    """Write a tiny ``open_clip.CLIP`` as a ``local-dir:`` folder (config JSON + weights)."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_open_clip_config(width=width, context_length=context_length, embed_dim=embed_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2), encoding="utf-8")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights_name.endswith(".safetensors"):
        save_file(state, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)
    return folder


def build_tiny_bert(folder: Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny ``BertModel`` (no pooler, like a sentence encoder) + a WordPiece tokenizer
    whose vocabulary is :data:`TINY_WORDS`; loads as ``hf:DIR``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + list(TINY_WORDS)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    return folder
