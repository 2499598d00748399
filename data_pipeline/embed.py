"""Precompute text embeddings into webdataset shards, so training never runs a large frozen text encoder.

:func:`embed_shards` copies every shard ``SRC/**/*.tar`` to ``OUT/`` (same relative path,
same members in the same order) and adds to each sample one member
``KEY.emb.safetensors`` after the sample's other members, holding:

- ``tokens``: float16 ``[L, D]``: the caption's per-token states, cut to its true length
  ``L`` (special tokens included, no padding);
- ``pooled``: float16 ``[D_pooled]``.

safetensors is a plain header + raw little-endian data (no pickle, no code on load); its
metadata holds one key, ``encoder`` (the encoder's spec); one key only, because
safetensors writes several in a random order and the shards should be reproducible
byte for byte. float16 and no padding make it
compact: a 20-token T5-XXL caption (D = 4096) takes 160 KiB. Training loaders read it
back with :func:`decode_embedding` and batch samples with
:meth:`cascade.text.TextEmbedding.from_sequences`.

Captions are the samples' ``txt`` members (UTF-8, surrounding whitespace stripped). A
sample's key and members follow webdataset: the member name up to the first dot of its
base name is the key, consecutive members with one key form a sample. An existing
``emb.safetensors`` member is replaced. Each output shard is written to a temporary file
and renamed into place only when complete.
"""

from __future__ import annotations

import copy
import io
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cascade.errors import UserError
from cascade.fileio import atomic_output
from cascade.text.base import TextEncoder
from cascade.text.prompts import decode_prompt, validate_prompt

#: The member extension that holds a sample's embedding.
EMBED_EXT = "emb.safetensors"
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)[.]([^/]*)$")  # webdataset's base_plus_ext, no dot-files


@dataclass
class _Sample:
    key: str
    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)
    raw_caption: bytes | None = None
    caption: str = ""


# ----------------------------------------------------------------------------- format
def encode_embedding(tokens: Tensor, pooled: Tensor, *, encoder: str = "") -> bytes:
    """Serialise one caption's embedding: tokens ``[L, D]``, pooled ``[D_pooled]`` -> safetensors bytes (fp16).

    :raises UserError: if a value does not fit in float16 (it would become inf).
    """
    from safetensors.torch import save

    if tokens.ndim != 2 or pooled.ndim != 1 or tokens.shape[0] < 1:
        shapes = f"{tuple(tokens.shape)}, {tuple(pooled.shape)}"
        raise ValueError(f"expected tokens [L >= 1, D] and pooled [D]; got {shapes}")
    pairs = (("tokens", tokens), ("pooled", pooled))
    half = {name: t.detach().to("cpu", torch.float16).contiguous() for name, t in pairs}
    for name, value in half.items():
        if not bool(torch.isfinite(value).all()):
            peak = float((tokens if name == "tokens" else pooled).abs().max())
            raise UserError(f"text embedding {name} from {encoder} does not fit in float16 (max |x| = {peak:.3g})")
    return save(half, metadata={"encoder": encoder})


def decode_embedding(
    raw: bytes, *, dim: int | None = None, pooled_dim: int | None = None
) -> tuple[Tensor, Tensor]:
    """Read a ``KEY.emb.safetensors`` blob: -> (tokens float32 ``[L, D]``, pooled float32 ``[D_pooled]``).

    :param dim: when given, the D that ``tokens`` must have (likewise ``pooled_dim``).
    :raises UserError: on bytes that are not safetensors, other tensor names, wrong ranks,
        an empty sequence, a non-float dtype, non-finite values or unexpected widths.
    """
    from safetensors.torch import load

    try:
        tensors = load(bytes(raw))
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for bad input
        raise UserError(f"malformed text embedding: not a safetensors blob ({str(error).splitlines()[0]})") from None
    if set(tensors) != {"tokens", "pooled"}:
        raise UserError(f"malformed text embedding: tensors {sorted(tensors)}, expected ['pooled', 'tokens']")
    tokens, pooled = tensors["tokens"], tensors["pooled"]
    if tokens.ndim != 2 or pooled.ndim != 1 or tokens.shape[0] < 1 or tokens.shape[1] < 1 or pooled.shape[0] < 1:
        raise UserError(
            f"malformed text embedding: tokens {tuple(tokens.shape)} and pooled {tuple(pooled.shape)}, "
            "expected [L >= 1, D] and [D_pooled]"
        )
    if not (tokens.is_floating_point() and pooled.is_floating_point()):
        raise UserError(f"malformed text embedding: dtypes {tokens.dtype} and {pooled.dtype}, expected float")
    if dim is not None and tokens.shape[1] != dim:
        raise UserError(f"text embedding has token width {tokens.shape[1]}, expected {dim} (another encoder?)")
    if pooled_dim is not None and pooled.shape[0] != pooled_dim:
        raise UserError(f"text embedding has pooled width {pooled.shape[0]}, expected {pooled_dim} (another encoder?)")
    tokens, pooled = tokens.float(), pooled.float()
    if not (bool(torch.isfinite(tokens).all()) and bool(torch.isfinite(pooled).all())):
        raise UserError("malformed text embedding: it holds inf or nan")
    return tokens, pooled


# ----------------------------------------------------------------------------- shards
def _iter_samples(shard: Path, caption_ext: str) -> Iterator[_Sample | tuple[tarfile.TarInfo, bytes]]:
    """Samples of a shard in order; members that belong to no sample come as (info, data)."""
    current: _Sample | None = None
    try:
        with tarfile.open(shard, "r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                match = _KEY_EXT.match(info.name)
                if match is None:
                    if current is not None:
                        yield current
                        current = None
                    yield info, data
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if current is None or current.key != key:
                    if current is not None:
                        yield current
                    current = _Sample(key)
                if ext == EMBED_EXT:
                    continue  # replaced by the new embedding
                current.members.append((info, data))
                if ext == caption_ext:
                    current.raw_caption = data
            _check_end_of_archive(tar, shard)
    except tarfile.TarError as error:
        raise UserError(f"cannot read shard {shard}: {error}") from None
    if current is not None:
        yield current


def _check_end_of_archive(tar: tarfile.TarFile, shard: Path) -> None:
    """Raise unless the members end at a zero block: ``tarfile`` silently stops at a truncated
    or corrupt header, which would drop the rest of the shard without a word."""
    end = tar.offset
    tar.fileobj.seek(end)  # type: ignore[union-attr]
    block = tar.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise UserError(f"cannot read shard {shard}: it is truncated or damaged at byte {end}")


class _ShardEmbedder:
    """Streams one shard: buffers up to ``batch_size`` captioned samples, embeds, writes them."""

    def __init__(self, encoder: TextEncoder, out: tarfile.TarFile, batch_size: int) -> None:
        self.encoder, self.out, self.batch_size = encoder, out, batch_size
        self.pending: list[_Sample] = []
        self.embedded = 0

    def add(self, sample: _Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        captions = [s.caption for s in self.pending]
        for (tokens, pooled), sample in zip(self.encoder.encode(captions).unbatch(), self.pending):
            for info, data in sample.members:
                _add_member(self.out, info, data)
            blob = encode_embedding(tokens, pooled, encoder=self.encoder.name)
            _add_member(self.out, _new_info(f"{sample.key}.{EMBED_EXT}", like=sample.members[0][0]), blob)
        self.embedded += len(self.pending)
        self.pending = []


def _new_info(name: str, like: tarfile.TarInfo) -> tarfile.TarInfo:
    """A fresh member header (no inherited pax ``path``) with ``like``'s time and owner."""
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = like.mtime, 0o644
    info.uid, info.gid, info.uname, info.gname = like.uid, like.gid, like.uname, like.gname
    return info


def _add_member(out: tarfile.TarFile, info: tarfile.TarInfo, data: bytes) -> None:
    info = copy.copy(info)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def _embed_one_shard(
    shard: Path, target: Path, encoder: TextEncoder, batch_size: int, caption_ext: str, skip_bad: bool
) -> dict[str, int]:
    counts = {"samples": 0, "embedded": 0, "skipped": 0}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp, open(tmp, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as out:
            embedder = _ShardEmbedder(encoder, out, batch_size)
            for item in _iter_samples_checked(shard, caption_ext, skip_bad, counts):
                if isinstance(item, _Sample):
                    counts["samples"] += 1
                    embedder.add(item)
                else:
                    _add_member(out, *item)
            embedder.flush()
            counts["embedded"] = embedder.embedded
    return counts


def _check_caption(sample: _Sample, shard: Path, caption_ext: str) -> str | None:
    """Set ``sample.caption``; return what is wrong with it, or None."""
    where = f"{shard.name}: caption of sample {sample.key!r}"
    if sample.raw_caption is None:
        return f"{shard.name}: sample {sample.key!r} has no .{caption_ext} caption"
    try:
        sample.caption = validate_prompt(decode_prompt(sample.raw_caption, where), where).strip()
    except UserError as error:
        return str(error)
    return None


def _iter_samples_checked(
    shard: Path, caption_ext: str, skip_bad: bool, counts: dict[str, int]
) -> Iterator[_Sample | tuple[tarfile.TarInfo, bytes]]:
    """:func:`_iter_samples` with caption checks; a bad sample raises, or is dropped and counted."""
    for item in _iter_samples(shard, caption_ext):
        if isinstance(item, _Sample):
            problem = _check_caption(item, shard, caption_ext)
            if problem is not None:
                if not skip_bad:
                    raise UserError(problem)
                counts["skipped"] += 1
                continue
        yield item


def embed_shards(
    src: Path,
    out: Path,
    encoder: TextEncoder,
    *,
    batch_size: int = 64,
    progress: bool = True,
    caption_ext: str = "txt",
    skip_bad: bool = False,
) -> dict[str, int]:
    """Add ``KEY.emb.safetensors`` to every sample of every shard under ``src``, writing to ``out``.

    :param src: a folder of webdataset shards (``*.tar``, searched recursively).
    :param out: the output folder (not ``src``); shards keep their relative paths.
    :param encoder: any :class:`~cascade.text.TextEncoder` (see :func:`cascade.text.load_text_encoder`).
    :param batch_size: captions per :meth:`~cascade.text.TextEncoder.encode` call.
    :param progress: show a progress bar (on stderr).
    :param caption_ext: the member extension holding the caption.
    :param skip_bad: drop samples whose caption is missing, empty or not UTF-8 (counted in
        ``skipped``) instead of stopping with an error.
    :returns: counts: ``shards``, ``samples`` (seen), ``embedded``, ``skipped``, ``truncated``
        (captions cut to the encoder's maximum length).
    :raises UserError: on a missing ``src``, no shards, ``out`` equal to ``src``, an unreadable
        shard, or (unless ``skip_bad``) a bad caption; the shard being written is not left behind.
    """
    src, out = Path(src), Path(out)
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if not src.is_dir():
        raise UserError(f"shard folder not found: {src}")
    if out.resolve() == src.resolve():
        raise UserError(f"the output folder must differ from the input folder ({src})")
    shards = sorted(p for p in src.rglob("*.tar") if p.is_file() and out.resolve() not in p.resolve().parents)
    if not shards:
        raise UserError(f"no webdataset shards (*.tar) in {src}")
    from tqdm import tqdm

    totals = {"shards": 0, "samples": 0, "embedded": 0, "skipped": 0, "truncated": 0}
    truncated_before = encoder.truncated_count
    for shard in tqdm(shards, desc="embed", unit="shard", disable=not progress, file=sys.stderr):
        counts = _embed_one_shard(shard, out / shard.relative_to(src), encoder, batch_size, caption_ext, skip_bad)
        totals["shards"] += 1
        for name, value in counts.items():
            totals[name] += value
    totals["truncated"] = encoder.truncated_count - truncated_before
    return totals
