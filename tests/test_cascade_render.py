"""A tiny cascade trained, exported and rendered through the commands users run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CASCADE, ROOT, run_command


def render(release: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_command(CASCADE + ["render", "--prompt", "a red sphere on the grass during the day",
                                  "--checkpoint", str(release), "--out", str(out), *extra], ROOT)


def test_render_writes_a_png_with_its_settings(tiny_cascade: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    render(tiny_cascade, out, "--seed", "7", "--save-stages")
    image = Image.open(out)
    assert image.size == (32, 32)
    assert image.text["prompt"] == "a red sphere on the grass during the day"
    assert image.text["seed"] == "7" and image.text["steps"] == "4,3" and image.text["sampler"] == "dpmpp-2m"
    assert Image.open(tmp_path / "a-16px.png").size == (16, 16)


def test_same_seed_same_image_and_other_seed_differs(tiny_cascade: Path, tmp_path: Path) -> None:
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        render(tiny_cascade, tmp_path / f"{name}.png", "--seed", seed, "--size", "16")
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert a.shape == (16, 16, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "48"], "this cascade renders 16, 32 px, not 48"),
        (["--steps", "0"], "steps must be a whole number >= 1, got 0"),
        (["--guidance", "nan"], "guidance scale must be a finite number"),
        (["--sampler", "plms"], "unknown sampler 'plms'"),
        (["--out", "x.jpg"], "unknown output extension '.jpg'"),
        (["--video", "--out", "x.gif"], "has no video stage"),
    ],
)
def test_bad_requests_are_one_line_errors(tiny_cascade: Path, tmp_path: Path, args: list[str], message: str) -> None:
    base = CASCADE + ["render", "--prompt", "a cube", "--checkpoint", str(tiny_cascade)]
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "x.png")]
    result = subprocess.run(base + args, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_empty_prompt_and_missing_checkpoint(tmp_path: Path) -> None:
    for args, message in (
        (["--prompt", "   ", "--checkpoint", str(tmp_path)], "empty"),
        (["--prompt", "a cube", "--checkpoint", str(tmp_path / "nope")], "does not exist"),
    ):
        result = subprocess.run(CASCADE + ["render", *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_ema_only_release_renders_and_says_what_it_lacks(tiny_cascade: Path) -> None:
    from cascade.errors import UserError
    from cascade.release import load_stage

    assert (tiny_cascade / "base" / "model.safetensors").is_file()
    assert not (tiny_cascade / "sr256" / "model.safetensors").exists()
    ema = load_stage(tiny_cascade / "sr256")
    assert sum(p.numel() for p in ema.parameters()) > 0
    with pytest.raises(UserError, match="exported with --ema-only"):
        load_stage(tiny_cascade / "sr256", ema=False)
