"""Does the video stage move objects the way the verb says? One subject per prompt, every motion verb.

    .venv/bin/python benchmarks/motion_verbs.py --checkpoint DIR [--seeds 0,1,2]

DIR is a cascade folder with a video stage. Each subject is rendered as an 8-frame clip at the video
stage's size with each of the world's five motions ("falling", "rising", "moving left", "moving
right", "standing still"), from the same seeds, and read back with the world reader, which tracks
each group's centre. A
stage whose motion follows its noise and not its text moves every verb's clip the same way (that
is what `cascade eval --video` cannot tell apart from a stage that has not learned the
directions yet). Prints a table (motion read back per verb) and writes
benchmarks/results/motion_verbs.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

VERBS = ("falling", "rising", "moving left", "moving right", "standing still")
SUBJECTS = ("a large red cube", "two small yellow spheres")
PLACE = "in the desert during the day"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a cascade folder with a video stage")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, the same for every verb")
    parser.add_argument("--out", type=Path, default=RESULTS / "motion_verbs.json")
    args = parser.parse_args()

    from cascade.images import to_uint8
    from cascade.pipeline import Cascade
    from data_pipeline.world.reader import read_clip

    seeds = [int(seed) for seed in args.seeds.split(",")]
    cascade = Cascade.load(args.checkpoint, video=True)
    size = cascade.video.config.resolution
    settings = cascade.settings()
    cases = [(subject, verb) for subject in SUBJECTS for verb in VERBS]
    runs = [(verb, f"{subject} {verb} {PLACE}", seed) for subject, verb in cases for seed in seeds]
    rendered = cascade.render([prompt for _, prompt, _ in runs], [seed for *_, seed in runs], size, settings,
                              frames=8, progress=False)[0]  # every clip in one batch
    rows, clips = [], []
    for (verb, prompt, seed), clip in zip(runs, to_uint8(rendered)):
        groups = read_clip(clip).groups
        motion = groups[0].motion if groups else "nothing seen"
        clips.append({"prompt": prompt, "seed": seed, "motion": motion,
                      "velocity": [round(v, 4) for v in groups[0].velocity] if groups else None,
                      "right": motion == verb.removeprefix("standing ")})
    for index, (subject, verb) in enumerate(cases):
        read = clips[index * len(seeds):(index + 1) * len(seeds)]
        rows.append([subject, verb, ", ".join(c["motion"] for c in read), sum(c["right"] for c in read)])
    right = sum(c["right"] for c in clips)
    print_table(["subject", "verb", "motion read back (one per seed)", "right"], rows)
    print(f"right motion: {right} of {len(clips)} clips (chance: 1 in 5)")
    write_json(args.out, {"checkpoint": str(args.checkpoint), "seeds": seeds, "right": right, "clips": clips,
                          "machine": machine()})


if __name__ == "__main__":
    main()
