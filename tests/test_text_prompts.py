"""Prompt validation, TextEmbedding, spec parsing and import-time behaviour of cascade.text (no models)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cascade.errors import UserError  # noqa: E402
from cascade.text import (  # noqa: E402
    TextEmbedding,
    TextEncoder,
    load_text_encoder,
    parse_dtype,
    parse_spec,
    validate_prompts,
)
from cascade.text.prompts import TruncationNotice, TruncationWarning  # noqa: E402


# ----------------------------------------------------------------------------- prompts
def test_valid_prompts_pass_unchanged_and_bytes_decode() -> None:
    assert validate_prompts(["a cat", " spaced ", "café".encode()]) == ["a cat", " spaced ", "café"]


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([""], "prompt 0 is empty"),
        (["ok", "   \n\t"], "prompt 1 is empty (whitespace only)"),
        (["ok", b"caf\xe9"], "prompt 1 is not valid UTF-8 (byte 0xe9 at position 3)"),
        ([b"\xff\xfeabc"], "prompt 0 is not valid UTF-8 (byte 0xff at position 0)"),
        (["abc\udcff"], "prompt 0 is not valid UTF-8"),  # surrogateescape'd byte inside a str
        ([None], "prompt 0 must be text, got NoneType"),
        ([], "no prompts given"),
        ("a cat", "expected a list of prompts"),
    ],
)
def test_bad_prompts_raise_one_line_user_errors(prompts: object, message: str) -> None:
    with pytest.raises(UserError) as info:
        validate_prompts(prompts)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_truncation_warns_once_and_counts_every_prompt() -> None:
    notice = TruncationNotice("t5:/m")
    with pytest.warns(TruncationWarning, match=r"has 9 tokens, more than its maximum of 5"):
        notice.report(["short", "a long prompt"], [3, 9], 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notice.report(["another long one", "and another"], [7, 6], 5)
    assert notice.count == 3


# ----------------------------------------------------------------------------- TextEmbedding
def test_from_sequences_and_unbatch_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, 4, generator=gen) for n in (3, 1, 5)]
    pooled = torch.randn(3, 2, generator=gen)
    emb = TextEmbedding.from_sequences(seqs, pooled)
    assert emb.tokens.shape == (3, 5, 4) and emb.mask.shape == (3, 5) and len(emb) == 3
    assert emb.lengths.tolist() == [3, 1, 5]
    assert torch.all(emb.tokens[~emb.mask] == 0)
    for (tokens, p), seq, q in zip(emb.unbatch(), seqs, pooled):
        assert torch.equal(tokens, seq) and torch.equal(p, q)


@pytest.mark.parametrize(
    "mask",
    [
        torch.tensor([[True, False, True]]),  # a hole: not right-padded
        torch.tensor([[False, False, False]]),  # an empty prompt
    ],
)
def test_text_embedding_rejects_masks_that_break_the_contract(mask: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="prefix"):
        TextEmbedding(tokens=torch.zeros(1, 3, 4), mask=mask, pooled=torch.zeros(1, 4))


def test_text_embedding_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="disagree"):
        TextEmbedding(tokens=torch.zeros(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool), pooled=torch.zeros(2, 4))


# ----------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("spec", "kind", "path", "arch"),
    [
        ("t5:/models/t5-xl", "t5", "/models/t5-xl", None),
        ("hf:rel/minilm", "hf", "rel/minilm", None),
        ("clip:local-dir:/m/clip", "clip", "/m/clip", None),
        ("clip:ViT-B-32:/w/a:b.safetensors", "clip", "/w/a:b.safetensors", "ViT-B-32"),
    ],
)
def test_parse_spec(spec: str, kind: str, path: str, arch: str | None) -> None:
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.path, parsed.arch) == (kind, Path(path), arch)
    assert parse_spec(str(parsed)) == parsed


def test_parse_spec_expands_home() -> None:
    assert parse_spec("t5:~/m").path == Path.home() / "m"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/models/t5", "has no kind"),
        ("bert:/m", "unknown text encoder kind 'bert' (choose from: t5, hf, clip)"),
        ("t5:", "has no path"),
        ("clip:/m/clip", "needs clip:local-dir:DIR or clip:ARCH:WEIGHTS_FILE"),
        ("clip:local-dir:", "has no path"),
    ],
)
def test_bad_specs_are_user_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(spec)


@pytest.mark.parametrize("kind", ["t5:", "hf:", "clip:local-dir:", "clip:ViT-B-32:"])
def test_missing_path_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"not found: {missing}"):
        load_text_encoder(f"{kind}{missing}")


def test_dtypes() -> None:
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(UserError, match="unknown text encoder dtype 'int8'"):
        parse_dtype("int8")


def test_importing_cascade_text_imports_no_model_library() -> None:
    code = (
        "import sys, cascade.text, data_pipeline.embed\n"
        "bad = [m for m in ('open_clip', 'transformers', 'sentencepiece') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ----------------------------------------------------------------------------- the encode() contract
class _Fixed(TextEncoder):
    """Returns the given raw tokens for any single prompt."""

    dim = pooled_dim = 2  # type: ignore[assignment]
    max_length = 8  # type: ignore[assignment]

    def __init__(self, tokens: torch.Tensor, lengths: list[int]) -> None:
        super().__init__("fixed")
        self.tokens, self.lengths = tokens, lengths

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        mask = torch.arange(self.tokens.shape[1])[None, :] < torch.tensor(self.lengths)[:, None]
        return TextEmbedding(tokens=self.tokens, mask=mask, pooled=self.tokens[:, 0])


def test_encode_zeroes_padding_even_when_it_is_nan_and_returns_float32() -> None:
    raw = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")]]], dtype=torch.bfloat16)
    emb = _Fixed(raw, [1]).encode(["x"])
    assert emb.tokens.dtype == torch.float32 and emb.tokens.tolist() == [[[1.0, 2.0], [0.0, 0.0]]]


def test_encode_refuses_non_finite_embeddings() -> None:
    raw = torch.tensor([[[1.0, float("inf")], [0.0, 0.0]]])
    with pytest.raises(UserError, match="text encoder fixed produced inf or nan"):
        _Fixed(raw, [2]).encode(["x"])
