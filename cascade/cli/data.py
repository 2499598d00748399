"""``cascade data``: write training shards (webdataset tars).

- ``cascade data world``: render the procedural shapes world (docs: WORLD.md) into shards.
  Sample i of ``--seed S`` is the scene of seed S + i, so a run is reproducible and a
  later run with ``--seed S+N`` extends it. Each sample is ``KEY.png`` (or ``KEY.clip.png``,
  the F frames side by side), ``KEY.txt`` (the caption) and ``KEY.json`` (the scene);
  keys are ``{split}-{scene seed:09d}``.
- ``cascade data ingest``: captioned images or img2dataset shards -> the same format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

MIN_SIZE = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="write training shards: render the shapes world, or ingest captioned images",
        description="Write webdataset shards ({prefix}-000000.tar, ...) for training.")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(parser))
    commands.required = True

    world = commands.add_parser(
        "world", help="render shapes-world scenes (or clips) into shards",
        description="Render scenes of the shapes world into shards: per sample KEY.png (clips: KEY.clip.png, "
                    "the frames side by side), KEY.txt (caption) and KEY.json (scene). "
                    "Sample i uses scene seed SEED + i.")
    world.add_argument("--split", required=True, help="train, eval or heldout")
    world.add_argument("--size", type=int, required=True, help="image side in pixels (>= 16)")
    world.add_argument("--count", type=int, required=True, help="number of samples (>= 1)")
    world.add_argument("--out", type=Path, required=True, help="output folder")
    world.add_argument("--clips", action="store_true", help="write clips instead of still images")
    world.add_argument("--frames", type=int, default=None, help="frames per clip (default 8; needs --clips)")
    world.add_argument("--seed", type=int, default=0, help="scene seed of the first sample (default 0)")
    world.add_argument("--workers", type=int, default=1, help="render in this many processes (default 1)")
    _add_shard_options(world, prefix_help="shard name prefix (default: the split)")
    world.set_defaults(func=run_world)

    ingest = commands.add_parser(
        "ingest", help="turn captioned images or img2dataset shards into training shards",
        description="Read SRC (a folder of images with same-named .txt captions, and/or img2dataset-style "
                    ".tar shards), centre-crop and resize to --size, drop images smaller than --min-size, "
                    "and write shards. Bad samples are skipped and counted in OUT/ingest-report.json.")
    ingest.add_argument("src", type=Path, metavar="SRC", help="source folder or .tar")
    ingest.add_argument("--out", type=Path, required=True, help="output folder")
    ingest.add_argument("--size", type=int, required=True, help="output image side in pixels (>= 16)")
    ingest.add_argument("--min-size", type=int, default=None, help="drop images with a shorter side (default: --size)")
    ingest.add_argument("--max-caption-chars", type=int, default=1000, help="drop longer captions (default 1000)")
    _add_shard_options(ingest, prefix_help="shard name prefix (default: data)")
    ingest.set_defaults(func=run_ingest)

    embed = commands.add_parser(
        "embed", help="add precomputed text embeddings to every sample of a shard set",
        description="Encode every sample's caption once with a frozen text encoder and store, as KEY.emb.safetensors, "
                    "its token embeddings (fp16, cut to the caption's true length) and pooled vector, so that "
                    "training never runs a large encoder. Specs: t5:DIR, hf:DIR, clip:local-dir:DIR, clip:ARCH:FILE.")
    embed.add_argument("--encoder", required=True, help="text encoder spec (local paths only)")
    embed.add_argument("--in", dest="src", type=Path, required=True, help="folder of shards")
    embed.add_argument("--out", type=Path, required=True, help="folder for the shards with embeddings")
    embed.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder dtype (default fp32)")
    embed.add_argument("--max-length", type=int, default=None, help="truncate captions to this many tokens")
    embed.add_argument("--batch-size", type=int, default=64, help="captions encoded together (default 64)")
    embed.add_argument("--skip-bad", action="store_true", help="skip and count samples with bad captions")
    embed.set_defaults(func=run_embed)


def _add_shard_options(parser: argparse.ArgumentParser, *, prefix_help: str) -> None:
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--prefix", default=None, help=prefix_help)
    parser.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in --out")


def _check_common(args: argparse.Namespace) -> None:
    from cascade.errors import UserError

    if args.size < MIN_SIZE:
        raise UserError(f"--size must be at least {MIN_SIZE}, got {args.size}")
    if args.maxcount < 1:
        raise UserError(f"--maxcount must be at least 1, got {args.maxcount}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")


def run_world(args: argparse.Namespace) -> int:
    from cascade.errors import UserError

    _check_common(args)
    if args.count < 1:
        raise UserError(f"--count must be at least 1, got {args.count}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.frames is not None and not args.clips:
        raise UserError("--frames needs --clips")
    frames = 8 if args.frames is None else args.frames
    if frames < 1:
        raise UserError(f"--frames must be at least 1, got {frames}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    from data_pipeline.world_shards import write_world_shards

    result = write_world_shards(
        args.out, args.split, args.count, args.size, seed=args.seed, clips=args.clips, frames=frames,
        workers=args.workers, maxcount=args.maxcount, prefix=args.prefix, overwrite=args.overwrite,
    )
    kind = f"{frames}-frame clips" if args.clips else "images"
    last = args.seed + args.count - 1
    print(f"wrote {result.count} {args.split} {kind} of {args.size} px (seeds {args.seed}..{last}) "
          f"in {len(result.shards)} shard(s) to {result.out}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from cascade.errors import UserError
    from cascade.text import load_text_encoder
    from data_pipeline.embed import embed_shards

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.src.is_dir():
        raise UserError(f"--in {args.src} is not a folder of shards")
    encoder = load_text_encoder(args.encoder, dtype=args.dtype, max_length=args.max_length)
    counts = embed_shards(args.src, args.out, encoder, batch_size=args.batch_size, skip_bad=args.skip_bad)
    print(f"embedded {counts['embedded']} of {counts['samples']} samples in {counts['shards']} shard(s) to {args.out} "
          f"(skipped {counts['skipped']}, truncated {counts['truncated']})")
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from cascade.errors import UserError

    _check_common(args)
    if not args.src.exists():
        raise UserError(f"SRC {args.src} does not exist")
    if args.min_size is not None and args.min_size < 1:
        raise UserError(f"--min-size must be at least 1, got {args.min_size}")
    if args.max_caption_chars < 1:
        raise UserError(f"--max-caption-chars must be at least 1, got {args.max_caption_chars}")

    from tqdm import tqdm

    from data_pipeline.ingest import ingest

    with tqdm(unit="img", desc="ingest") as bar:
        summary = ingest(args.src, args.out, size=args.size, min_size=args.min_size, maxcount=args.maxcount,
                         prefix=args.prefix or "data", max_caption_chars=args.max_caption_chars,
                         overwrite=args.overwrite, progress=bar.update)
    print(summary.line())
    if summary.written == 0:
        raise UserError(f"no usable sample in {args.src} (see {summary.report})")
    return 0
