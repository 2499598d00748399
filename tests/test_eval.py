"""``cascade eval``: the scoring is right on true renders, the metrics match closed forms, the
report is written for a tiny cascade."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from cascade.evaluation.cascade_eval import accuracy_by_kind, accuracy_table, read_renders, score_readings, score_renders
from cascade.evaluation.drawn import (
    markdown_drawn_table,
    markdown_two_groups_table,
    objects_drawn,
    reading_summary,
    two_groups_drawn,
)
from cascade.evaluation.sr_fidelity import psnr, ssim
from conftest import CASCADE, ROOT, run_command


def test_true_renders_score_perfectly() -> None:
    from data_pipeline.world import caption, render_image, sample_scene

    scenes = [sample_scene("heldout", seed) for seed in range(20)]
    renders = np.stack([render_image(scene, 64) for scene in scenes])
    table = accuracy_table(score_renders(scenes, renders, video=False))
    assert all(row["accuracy"] == 1.0 for row in table.values())
    assert table["all"]["n"] == 20 and caption(scenes[0], style="compact")
    by_kind = accuracy_by_kind(scenes, score_renders(scenes, renders, video=False))
    assert sum(kind["all"]["n"] for kind in by_kind.values()) == 20
    assert all(row["accuracy"] == 1.0 for kind in by_kind.values() for row in kind.values())
    assert set(by_kind) <= {"1 object", "2 objects", "3 objects", "2 groups"} and "relation" in by_kind["2 groups"]
    assert all("relation" not in table for kind, table in by_kind.items() if kind != "2 groups")


def test_objects_drawn_counts_what_the_reader_found() -> None:
    from data_pipeline.world import render_image, sample_scene

    scenes = [sample_scene("eval", seed) for seed in range(40)]
    readings = read_renders(np.stack([render_image(scene, 64) for scene in scenes]), video=False)
    single = [s for s in scenes if len(s.groups) == 1]
    drawn = objects_drawn(scenes, readings)  # true renders: every one-group scene on the diagonal
    assert drawn == {str(c): {str(c): sum(s.groups[0].count == c for s in single)}
                     for c in sorted({s.groups[0].count for s in single})}
    three = next(i for i, s in enumerate(scenes) if len(s.groups) == 1 and s.groups[0].count == 3)
    two = next(s for s in scenes if len(s.groups) == 1 and s.groups[0].count == 2)
    pair = next(i for i, s in enumerate(scenes) if len(s.groups) == 2)
    # asked for two, the render shows three; asked for two, it shows two single objects of two kinds
    assert objects_drawn([two, two], [readings[three], readings[pair]]) == {"2": {"3": 1, "2": 1}}
    table = markdown_drawn_table({"2": {"3": 1, "2": 1}})
    assert "| asked | n | found 0 |" in table and "| 2 | 2 | 0 | 0 | 1 | 1 | 0 | 0 |" in table
    summary = reading_summary(readings[pair])
    assert json.loads(json.dumps(summary)) == summary and len(summary["groups"]) == 2
    assert {(g["colour"], g["shape"]) for g in summary["groups"]} == {(g.colour, g.shape) for g in scenes[pair].groups}
    assert summary["relation"] in ("above", "below", "left of", "right of")  # of the reader's first group to its second


def test_two_groups_drawn_tells_alike_objects_from_misplaced_ones() -> None:
    from data_pipeline.world import render_image, sample_scene

    scenes = [sample_scene("eval", seed) for seed in range(40)]
    readings = read_renders(np.stack([render_image(scene, 64) for scene in scenes]), video=False)
    scores = score_readings(scenes, readings)
    pairs = [i for i, s in enumerate(scenes) if len(s.groups) == 2]
    drawn = two_groups_drawn(scenes, readings, scores)  # true renders: both objects right, in place
    assert drawn == {"n": len(pairs), "groups_read": {"0": 0, "1": 0, "2": len(pairs), "3+": 0},
                     "objects_right": len(pairs), "relation_right_of_those": len(pairs)}
    # a render of two alike objects (a one-group scene of two) reads as one group: not both right
    alike = next(i for i, s in enumerate(scenes) if len(s.groups) == 1 and s.groups[0].count == 2)
    first = pairs[0]
    wrong = score_readings([scenes[first]], [readings[alike]])[0]
    turned = {**scores[first], "relation": False}  # both objects right, in the wrong places
    drawn = two_groups_drawn([scenes[first]] * 3, [readings[alike], readings[first], readings[first]],
                             [wrong, scores[first], turned])
    assert drawn["groups_read"] == {"0": 0, "1": 1, "2": 2, "3+": 0}
    assert drawn["objects_right"] == 2 and drawn["relation_right_of_those"] == 1
    table = markdown_two_groups_table(drawn)
    assert "| n | groups read: 0 | 1 | 2 | 3+ |" in table and "| 3 | 0 | 1 | 2 | 0 | 2 | 1 (50%) |" in table
    assert two_groups_drawn(scenes[:0], readings[:0], scores[:0]) == {} and markdown_two_groups_table({}) == ""


def test_psnr_and_ssim_closed_forms() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2))
    shifted = x + 2 / 255  # every pixel off by one 8-bit level
    assert torch.allclose(psnr(shifted, x), torch.full((2,), 20 * math.log10(255)), atol=1e-3)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert bool((ssim(noisy, x) < 0.9).all()) and bool((psnr(noisy, x) < psnr(shifted, x)).all())


def test_eval_writes_its_report(tiny_cascade: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_command(CASCADE + ["eval", "--checkpoint", str(tiny_cascade), "--n", "6", "--split", "heldout",
                                    "--sr", "--steps-curve", "2,3", "--out", str(out)], ROOT)
    report = json.loads((out / "heldout.json").read_text())
    assert report["n"] == 6 and len(report["samples"]) == 6
    assert set(report["accuracy"]) >= {"time", "ground", "colour", "shape", "count", "all"}
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in report["accuracy"].values())
    assert "| attribute | accuracy | n |" in (out / "heldout.md").read_text()
    assert "| scene | n | time |" in (out / "heldout.md").read_text() and "| scene | n | time |" in result.stdout
    assert sum(kind["all"]["n"] for kind in report["accuracy_by_kind"].values()) == 6
    assert all(set(sample["read"]) == {"time", "ground", "relation", "groups"} for sample in report["samples"])
    one_group = sum(sample["scores"]["relation"] is None for sample in report["samples"])
    assert sum(n for row in report["objects_drawn"].values() for n in row.values()) == one_group
    assert (out / "heldout-grid.png").is_file() and (out / "steps_curve.png").is_file()
    sr = json.loads((out / "sr_fidelity.json").read_text())
    assert [(row["from"], row["to"]) for row in sr] == [(16, 32)]
    assert sr[0]["bicubic_psnr"] > 15  # bicubic of a true render is close; the untrained stage is not
    assert "steps -> all-correct: 2:" in result.stdout


def test_sr_fidelity_of_one_stage_is_chosen_by_the_size_it_makes(tiny_cascade: Path) -> None:
    import pytest

    from cascade.errors import UserError
    from cascade.evaluation.sr_fidelity import sr_fidelity, sr_stage_indices
    from cascade.pipeline import Cascade

    cascade = Cascade.load(tiny_cascade)
    assert sr_stage_indices(cascade) == sr_stage_indices(cascade, (32,)) == [1]
    with pytest.raises(UserError, match="make 32 px"):
        sr_stage_indices(cascade, (16, 64))
    rows = sr_fidelity(cascade, "eval", n=2, batch_size=2, stages=[1])
    assert [(row["from"], row["to"], row["n"]) for row in rows] == [(16, 32, 2)]
    assert rows[0]["psnr_gain_db"] == pytest.approx(rows[0]["psnr"] - rows[0]["bicubic_psnr"], abs=1e-4)
    assert sr_fidelity(cascade, "eval", n=2, batch_size=2, stages=[]) == []
