"""The shapes-world render benchmark runs and writes its table as JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "world_render.py"


def test_world_render_benchmark_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("world_render_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "world_render.json"
    assert module.main(["--seconds", "0.01", "--sizes", "16", "32", "--frames", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["kind"], r["size"]): r for r in result["rows"]}
    assert set(rows) == {("image", 16), ("clip", 16), ("image", 32), ("clip", 32)}
    for (kind, _), r in rows.items():
        assert r["scenes_per_s"] > 0 and r["frames"] == (2 if kind == "clip" else 1)
        assert abs(r["frames_per_s"] - r["scenes_per_s"] * r["frames"]) < 1e-6 * r["frames_per_s"]
    assert "scenes/s" in capsys.readouterr().out
