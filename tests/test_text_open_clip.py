"""open_clip text towers: a tiny CLIP saved as a local-dir folder, loaded through the clip: specs."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cascade.errors import UserError  # noqa: E402
from cascade.text import TruncationWarning, load_text_encoder  # noqa: E402
from cascade.text.open_clip_encoder import OpenClipTextEncoder  # noqa: E402
from cascade.text.testing import TINY_CAPTIONS, build_tiny_open_clip, tiny_open_clip_config  # noqa: E402

SHORT = "two cats"
LONG = TINY_CAPTIONS[0]
TOO_LONG = " ".join(TINY_CAPTIONS[:3])  # more than the 16-token context


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "tiny_clip"
    return path if (path / "open_clip_model.safetensors").exists() else build_tiny_open_clip(path)


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> OpenClipTextEncoder:
    encoder = load_text_encoder(f"clip:local-dir:{clip_dir}")
    assert isinstance(encoder, OpenClipTextEncoder)
    return encoder


def test_shapes_mask_and_zero_padding(clip: OpenClipTextEncoder) -> None:
    prompts = [LONG, SHORT]
    emb = clip.encode(prompts)
    counts = [len(clip.tokenizer.encode(p)) + 2 for p in prompts]  # <start> ... <end>
    assert (clip.dim, clip.pooled_dim, clip.max_length) == (32, 16, 16)
    assert emb.tokens.shape == (2, max(counts), 32) and emb.pooled.shape == (2, 16)
    assert emb.lengths.tolist() == counts
    assert torch.all(emb.tokens[~emb.mask] == 0)
    assert clip.model.visual is None  # the image tower was dropped


def test_pooled_is_open_clips_encode_text_and_the_projected_eot_state(
    clip: OpenClipTextEncoder, clip_dir: Path
) -> None:
    import open_clip

    emb = clip.encode([LONG, SHORT])
    reference = open_clip.create_model(f"local-dir:{clip_dir}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    with torch.no_grad():
        want = reference.encode_text(tokenizer([LONG, SHORT]))  # [2, 16], unnormalised
    assert torch.allclose(emb.pooled, want, atol=1e-6)
    eot = emb.tokens[torch.arange(2), emb.lengths - 1]  # [2, 32], final state at <end_of_text>
    assert torch.allclose(eot @ reference.text_projection, emb.pooled, atol=1e-5)


def test_padding_does_not_change_the_real_tokens(clip: OpenClipTextEncoder) -> None:
    alone, batched = clip.encode([SHORT]), clip.encode([LONG, SHORT])
    n = int(alone.lengths[0])
    assert torch.allclose(batched.tokens[1, :n], alone.tokens[0], atol=1e-6)
    assert torch.allclose(batched.pooled[1], alone.pooled[0], atol=1e-6)


def test_truncation_keeps_the_end_token_and_warns_once(clip: OpenClipTextEncoder, clip_dir: Path) -> None:
    encoder = load_text_encoder(f"clip:local-dir:{clip_dir}")
    with pytest.warns(TruncationWarning, match="more than its maximum of 16") as record:
        emb = encoder.encode([TOO_LONG, SHORT])
    assert len(record) == 1 and emb.lengths.tolist()[0] == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode([TOO_LONG])
    assert encoder.truncated_count == 2
    shorter = load_text_encoder(f"clip:local-dir:{clip_dir}", max_length=8)
    assert torch.allclose(shorter.encode([SHORT]).tokens, clip.encode([SHORT]).tokens, atol=1e-6)  # causal
    with pytest.warns(TruncationWarning):
        assert shorter.encode([LONG]).lengths.tolist() == [8]
    with pytest.raises(UserError, match="between 2 and the CLIP context length 16"):
        load_text_encoder(f"clip:local-dir:{clip_dir}", max_length=17)


def test_bf16_loading(clip_dir: Path, clip: OpenClipTextEncoder) -> None:
    encoder = load_text_encoder(f"clip:local-dir:{clip_dir}", dtype="bf16")
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    emb, ref = encoder.encode([LONG]), clip.encode([LONG])
    assert emb.tokens.dtype == torch.float32
    assert torch.allclose(emb.tokens, ref.tokens, atol=0.1, rtol=0.05)


def test_architecture_by_name_with_a_weights_file(clip_dir: Path, clip: OpenClipTextEncoder, tmp_path: Path) -> None:
    import open_clip
    from safetensors.torch import load_file

    (tmp_path / "cascade-tiny-test-clip.json").write_text(json.dumps(tiny_open_clip_config()))
    open_clip.add_model_config(tmp_path / "cascade-tiny-test-clip.json")
    weights = tmp_path / "weights.pt"
    torch.save(load_file(str(clip_dir / "open_clip_model.safetensors")), weights)
    encoder = load_text_encoder(f"clip:cascade-tiny-test-clip:{weights}")
    assert torch.equal(encoder.encode([LONG]).pooled, clip.encode([LONG]).pooled)


@pytest.mark.parametrize(
    ("other", "detail"), [({"width": 48}, "other shapes"), ({"context_length": 20}, "other shapes")]
)
def test_weights_that_do_not_match_the_architecture(clip_dir: Path, tmp_path: Path, other: dict, detail: str) -> None:
    foreign = build_tiny_open_clip(tmp_path / "foreign", **other)
    bad = shutil.copytree(clip_dir, tmp_path / "bad")
    shutil.copy(foreign / "open_clip_model.safetensors", bad / "open_clip_model.safetensors")
    with pytest.raises(UserError, match=f"do not match the architecture .*{detail}"):
        load_text_encoder(f"clip:local-dir:{bad}")


def test_folder_without_weights_and_bad_files(clip_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "config_only"
    empty.mkdir()
    shutil.copy(clip_dir / "open_clip_config.json", empty)
    with pytest.raises(UserError, match="no weights file"):
        load_text_encoder(f"clip:local-dir:{empty}")  # open_clip itself would initialise randomly
    (empty / "open_clip_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="could not read weights"):
        load_text_encoder(f"clip:local-dir:{empty}")
    with pytest.raises(UserError, match="no open_clip_config.json"):
        load_text_encoder(f"clip:local-dir:{tmp_path}")


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("ViT-Q-99", "unknown open_clip architecture 'ViT-Q-99'"),
        ("ViT-B-16-SigLIP", "would come from the hub"),
        ("coca_ViT-B-32", "CoCa-style"),
    ],
)
def test_architectures_that_cannot_work_are_refused(tmp_path: Path, arch: str, message: str) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match=message):
        load_text_encoder(f"clip:{arch}:{weights}")


def test_weights_path_must_be_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="wants a weights file"):
        load_text_encoder(f"clip:ViT-B-32:{tmp_path}")


def test_words_are_the_token_and_position_embeddings(clip: OpenClipTextEncoder, clip_dir: Path) -> None:
    import open_clip

    emb = clip.encode([LONG, SHORT])
    reference = open_clip.create_model(f"local-dir:{clip_dir}").eval()
    ids = open_clip.get_tokenizer(f"local-dir:{clip_dir}")([LONG, SHORT])[:, : emb.tokens.shape[1]]  # [2, L]
    with torch.no_grad():
        want = reference.token_embedding(ids) + reference.positional_embedding[: ids.shape[1]]  # [2, L, 32]
    assert clip.word_dim == 32 and emb.words is not None and emb.words.shape == emb.tokens.shape
    assert torch.allclose(emb.words[emb.mask], want[emb.mask], atol=1e-6)
    assert torch.all(emb.words[~emb.mask] == 0)
    alone = clip.encode([SHORT])
    assert torch.allclose(emb.words[1, : int(alone.lengths[0])], alone.words[0], atol=1e-6)
