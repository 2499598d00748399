"""T5 and other transformers encoders, built tiny with the real libraries and loaded through specs."""

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
from cascade.text.hf_encoder import HFTextEncoder  # noqa: E402
from cascade.text.testing import TINY_CAPTIONS, build_tiny_bert, build_tiny_t5  # noqa: E402

SHORT = "two cats"
LONG = TINY_CAPTIONS[0]  # "one red spheres falling into the ocean at sunset"


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "tiny_t5"
    return path if (path / "model.safetensors").exists() else build_tiny_t5(path)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "tiny_bert"
    return path if (path / "model.safetensors").exists() else build_tiny_bert(path)


@pytest.fixture(scope="module")
def t5(t5_dir: Path) -> HFTextEncoder:
    encoder = load_text_encoder(f"t5:{t5_dir}")
    assert isinstance(encoder, HFTextEncoder)
    return encoder


def _edited_copy(src: Path, dst: Path, **config: object) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "config.json").read_text())
    data.update(config)
    (dst / "config.json").write_text(json.dumps(data))
    return dst


def test_tokenizer_loaded_its_vocabulary(t5: HFTextEncoder, t5_dir: Path) -> None:
    import sentencepiece as spm

    ids = t5.tokenizer(LONG)["input_ids"]
    assert ids[-1] == t5.tokenizer.eos_token_id
    assert t5.tokenizer.unk_token_id not in ids  # transformers 5 + T5Tokenizer(vocab_file=...) gives all <unk>
    assert ids[:-1] == spm.SentencePieceProcessor(model_file=str(t5_dir / "spiece.model")).encode(LONG)


def test_shapes_and_mask_follow_the_token_counts(t5: HFTextEncoder) -> None:
    prompts = [LONG, SHORT, TINY_CAPTIONS[7]]
    counts = [len(t5.tokenizer(p)["input_ids"]) for p in prompts]
    emb = t5.encode(prompts)
    assert (t5.dim, t5.pooled_dim, t5.max_length) == (32, 32, 512)
    assert emb.tokens.shape == (3, max(counts), 32) and emb.pooled.shape == (3, 32)
    assert emb.tokens.dtype == emb.pooled.dtype == torch.float32 and emb.mask.dtype == torch.bool
    assert emb.lengths.tolist() == counts
    assert torch.all(emb.tokens[~emb.mask] == 0)
    weights = emb.mask[..., None].float()
    assert torch.allclose(emb.pooled, (emb.tokens * weights).sum(1) / weights.sum(1), atol=1e-6)


def test_matches_transformers_run_directly(t5: HFTextEncoder, t5_dir: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    model = T5EncoderModel.from_pretrained(str(t5_dir), local_files_only=True).eval()
    batch = AutoTokenizer.from_pretrained(str(t5_dir), local_files_only=True)([LONG], return_tensors="pt")
    with torch.no_grad():
        want = model(**batch).last_hidden_state[0]  # [L, D]
    assert torch.allclose(t5.encode([LONG]).tokens[0], want, atol=1e-6)


def test_padding_does_not_change_the_real_tokens(t5: HFTextEncoder) -> None:
    alone = t5.encode([SHORT])
    batched = t5.encode([LONG, SHORT])
    n = int(alone.lengths[0])
    assert batched.lengths[1] == n < batched.tokens.shape[1]
    assert torch.allclose(batched.tokens[1, :n], alone.tokens[0], atol=1e-5)
    assert torch.allclose(batched.pooled[1], alone.pooled[0], atol=1e-5)


def test_embeddings_are_ordinary_tensors_that_training_can_use(t5: HFTextEncoder) -> None:
    emb = t5.encode([SHORT])
    assert not emb.tokens.is_inference() and not emb.tokens.requires_grad
    layer = torch.nn.Linear(32, 4)
    layer(emb.tokens).sum().backward()  # inference tensors could not be saved for backward
    assert layer.weight.grad is not None
    assert all(not p.requires_grad for p in t5.model.parameters())


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_loading(t5_dir: Path, t5: HFTextEncoder, dtype: str, torch_dtype: torch.dtype) -> None:
    encoder = load_text_encoder(f"t5:{t5_dir}", dtype=dtype)
    dtypes = {name: p.dtype for name, p in encoder.model.named_parameters()}
    # transformers keeps T5's feed-forward output ``wo`` in fp32 under fp16 (it overflows otherwise)
    kept = {name for name, d in dtypes.items() if d != torch_dtype}
    assert all(name.endswith("DenseReluDense.wo.weight") for name in kept) and (not kept or dtype == "fp16")
    assert len(kept) < len(dtypes)
    emb, ref = encoder.encode([LONG]), t5.encode([LONG])
    assert emb.tokens.dtype == torch.float32
    assert torch.allclose(emb.tokens, ref.tokens, atol=0.1, rtol=0.05)


def test_long_prompt_is_truncated_with_one_warning(t5_dir: Path) -> None:
    encoder = load_text_encoder(f"t5:{t5_dir}", max_length=8)
    with pytest.warns(TruncationWarning, match="more than its maximum of 8") as record:
        emb = encoder.encode([LONG, SHORT])
    assert len(record) == 1
    assert emb.tokens.shape[1] == 8 and emb.lengths.tolist()[0] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode([LONG])
    assert encoder.truncated_count == 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"d_model": 48}, "weights have other shapes"),
        ({"num_layers": 3}, "weights are missing"),
        ({"num_layers": 1}, "weights for layers the config does not have"),
    ],
)
def test_checkpoint_that_does_not_match_its_config(t5_dir: Path, tmp_path: Path, edit: dict, message: str) -> None:
    bad = _edited_copy(t5_dir, tmp_path / "bad", **edit)
    with pytest.raises(UserError, match=f"checkpoint in {bad} does not match its config.json: .*{message}"):
        load_text_encoder(f"t5:{bad}")


def test_folder_without_weights_or_config(t5_dir: Path, tmp_path: Path) -> None:
    no_weights = shutil.copytree(t5_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UserError, match="could not load the model in"):
        load_text_encoder(f"t5:{no_weights}")
    (no_weights / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json in"):
        load_text_encoder(f"t5:{no_weights}")


def test_t5_spec_refuses_another_model(bert_dir: Path) -> None:
    with pytest.raises(UserError, match=f"holds a 'bert' model, not T5 .*use hf:{bert_dir}"):
        load_text_encoder(f"t5:{bert_dir}")


def test_hf_spec_loads_a_t5_folder_as_its_encoder(t5_dir: Path, t5: HFTextEncoder) -> None:
    encoder = load_text_encoder(f"hf:{t5_dir}")
    assert torch.equal(encoder.encode([LONG]).tokens, t5.encode([LONG]).tokens)


def test_hf_sentence_encoder(bert_dir: Path) -> None:
    encoder = load_text_encoder(f"hf:{bert_dir}")  # saved without a pooler: that is not an error
    assert (encoder.dim, encoder.max_length) == (32, 64)  # from max_position_embeddings
    emb = encoder.encode([LONG, SHORT])
    assert emb.lengths.tolist() == [len(LONG.split()) + 2, 4]  # [CLS] words [SEP]
    alone = encoder.encode([SHORT])
    assert torch.allclose(emb.tokens[1, :4], alone.tokens[0], atol=1e-5)
    assert torch.allclose(emb.pooled[1], alone.tokens[0].mean(0), atol=1e-5)
    with pytest.raises(UserError, match="max_length 100 is more than the 64 positions"):
        load_text_encoder(f"hf:{bert_dir}", max_length=100)


def test_words_are_the_embedding_layers_output(t5: HFTextEncoder, t5_dir: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    model = T5EncoderModel.from_pretrained(str(t5_dir), local_files_only=True).eval()
    ids = AutoTokenizer.from_pretrained(str(t5_dir), local_files_only=True)([LONG], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model.get_input_embeddings()(ids)[0]  # [L, D]: T5 adds no position embedding
    emb = t5.encode([LONG, SHORT])
    assert t5.word_dim == 32 and emb.words is not None and emb.words.shape == emb.tokens.shape
    assert torch.allclose(emb.words[0], want, atol=1e-6)
    assert torch.all(emb.words[~emb.mask] == 0)
