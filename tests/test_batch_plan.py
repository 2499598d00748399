"""The batch job's plan: seeds, safe file names, and batches that do not depend on the ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.batchjob.plan import global_batches, output_seed, plan_outputs, rank_batches, safe_name
from cascade.batchjob.prompts import PromptItem, read_prompt_file


@pytest.mark.parametrize("item_id", ["../../etc/passwd", "/etc/passwd", "a\x00b", "..", ".", "", "x/y\\z", "é" * 300,
                                     "CON", "-rf", " spaced out "])
def test_safe_names_stay_in_the_folder(item_id: str, tmp_path: Path) -> None:
    name = safe_name(item_id)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
    assert len(name) <= 100
    assert (tmp_path / f"{name}-000.png").resolve().parent == tmp_path.resolve()


def test_distinct_ids_get_distinct_names() -> None:
    ids = ["a/b", "a_b", "a?b", "a b", "a.b", "A_b"]
    assert len({safe_name(i) for i in ids}) == len(ids)


def test_seeds_depend_on_job_seed_id_and_index_only() -> None:
    items = [PromptItem(id=f"i{n}", prompt="p", line=n) for n in range(5)]
    plan = plan_outputs(items, 3, job_seed=7, size=64, extension=".png")
    again = plan_outputs(list(reversed(items)), 3, job_seed=7, size=64, extension=".png")
    assert {o.key: o.seed for o in plan} == {o.key: o.seed for o in again}
    assert output_seed(7, "i1", 2) != output_seed(8, "i1", 2) != output_seed(7, "i2", 2)
    assert len({o.seed for o in plan}) == 15


def test_batches_are_cut_before_ranks_and_shared_out_whole() -> None:
    items = [PromptItem(id=f"i{n}", prompt="p", line=n, size=64 if n != 3 else 256) for n in range(7)]
    batches = global_batches(plan_outputs(items, 2, 0, 64, ".png"), batch_size=3)
    assert all(len({(o.size, o.guidance) for o in b}) == 1 and len(b) <= 3 for b in batches)
    for world in (1, 2, 3, 5):
        shared = [b for rank in range(world) for b in rank_batches(batches, rank, world)]
        assert sorted(map(id, shared)) == sorted(map(id, batches))


def test_ids_with_nul_bytes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a\\u0000b", "prompt": "x"}\n{"id": "ok", "prompt": "y"}\n')
    items, rejected = read_prompt_file(path)
    assert [i.id for i in items] == ["ok"] and rejected[0].line == 1 and "NUL" in rejected[0].reason
