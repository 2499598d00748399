"""Images per second of one `cascade batch` job against a loop of single `cascade render` calls.

    .venv/bin/python benchmarks/batch_vs_render.py [--checkpoint weights/shapes] [--prompts 8] [--batch-size 8]

Both go through the user-facing commands in subprocesses, so the loop pays for loading the
cascade once per image, as a shell loop over `cascade render` would. Prints a table and writes
benchmarks/results/batch_vs_render.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASCADE = [sys.executable, "-m", "cascade"]
PROMPTS = ["a red sphere on the grass during the day", "three glass cubes over the ocean at sunset",
           "a small blue star in the sky at night", "two yellow pyramids in the desert during the day"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "weights" / "shapes")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "batch_vs_render.json")
    args = parser.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        for i, prompt in enumerate(prompts):
            subprocess.run(CASCADE + ["render", "--prompt", prompt, "--seed", str(i), "--size", str(args.size),
                                      "--checkpoint", str(args.checkpoint), "--out", str(work / f"{i}.png")],
                           check=True, capture_output=True, cwd=ROOT)
        loop = time.perf_counter() - start
        (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
        start = time.perf_counter()
        subprocess.run(CASCADE + ["batch", "--prompts", str(work / "prompts.txt"), "--out", str(work / "job"),
                                  "--size", str(args.size), "--batch-size", str(args.batch_size),
                                  "--checkpoint", str(args.checkpoint)], check=True, capture_output=True, cwd=ROOT)
        batch = time.perf_counter() - start
    rows = [["render loop", len(prompts), round(loop, 1), round(len(prompts) / loop, 3)],
            ["batch job", len(prompts), round(batch, 1), round(len(prompts) / batch, 3)]]
    print_table(["how", "images", "seconds", "images/s"], rows)
    print(f"batch job: {loop / batch:.2f}x the images/s of the render loop (size {args.size}, batch {args.batch_size})")
    write_json(args.out, {"images": len(prompts), "size": args.size, "batch_size": args.batch_size,
                          "render_loop_seconds": loop, "batch_seconds": batch, "speedup": loop / batch,
                          "checkpoint": str(args.checkpoint), "machine": machine()})


if __name__ == "__main__":
    main()
