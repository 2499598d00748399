"""Over a hundred bad inputs to the commands and the config loader: each is one line on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.cli import main as cascade_main
from cascade.train_stage import main as train_main

HUGE_PROMPT = "a red cube " * 10_000  # ~110 kB
NOT_UTF8 = "a red \udcff cube"  # what argv holds for an undecodable byte


def one_line_error(capsys: pytest.CaptureFixture, status: int, label: object = "") -> str:
    err = capsys.readouterr().err
    assert status == 2, (label, err[-500:])
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    a_file = root / "a-file.txt"
    a_file.write_text("not a folder\n")
    empty = root / "empty-dir"
    empty.mkdir()
    return {"root": root, "file": a_file, "dir": empty, "missing": root / "does-not-exist"}


def render_cases(p: dict[str, Path]) -> list[list[str]]:
    cp = ["--checkpoint", "{cascade}"]
    return [
        ["render", "--prompt", ""],
        ["render", "--prompt", "   "],
        ["render", "--prompt", "\t\n"],
        ["render", "--prompt", HUGE_PROMPT],
        ["render", "--prompt", NOT_UTF8],
        ["render"],
        ["render", "--prompt", "x", "--steps", "abc"],
        ["render", "--prompt", "x", "--steps", "1.5"],
        ["render", "--prompt", "x", "--guidance", "strong"],
        ["render", "--prompt", "x", "--size", "big"],
        ["render", "--prompt", "x", "--seed", "-1"],
        ["render", "--prompt", "x", "--seed", str(2**64)],
        ["render", "--prompt", "x", "--size", "0"],
        ["render", "--prompt", "x", "--size", "-64"],
        ["render", "--prompt", "x", "--checkpoint", str(p["missing"])],
        ["render", "--prompt", "x", "--checkpoint", str(p["file"])],
        ["render", "--prompt", "x", "--checkpoint", str(p["dir"])],
        ["render", "--prompt", "x", "--out", str(p["dir"])] + cp,
        ["render", "--prompt", "x", "--out", "x.jpg"] + cp,
        ["render", "--prompt", "x", "--out", "x"] + cp,
        ["render", "--prompt", "x", "--video", "--out", "x.png"] + cp,
        ["render", "--prompt", "x", "--frames", "4"] + cp,
        ["render", "--prompt", "x", "--fps", "4"] + cp,
        ["render", "--prompt", "x", "--steps", "0"] + cp,
        ["render", "--prompt", "x", "--steps", "-3"] + cp,
        ["render", "--prompt", "x", "--steps", "100000"] + cp,
        ["render", "--prompt", "x", "--steps", "3,3,3,3"] + cp,
        ["render", "--prompt", "x", "--guidance", "nan"] + cp,
        ["render", "--prompt", "x", "--guidance", "inf"] + cp,
        ["render", "--prompt", "x", "--guidance", "-inf"] + cp,
        ["render", "--prompt", "x", "--guidance", "1,2,3"] + cp,
        ["render", "--prompt", "x", "--size", "48"] + cp,
        ["render", "--prompt", "x", "--size", "100000"] + cp,
        ["render", "--prompt", "x", "--sampler", "plms"] + cp,
        ["render", "--prompt", "x", "--sampler", ""] + cp,
        ["render", "--prompt", "x", "--video", "--out", "x.gif"] + cp,
        ["render", "--prompt", "x", "--device", "tpu"] + cp,
        ["render", "--prompt", "x", "--device", "cuda:99"] + cp,
        ["render", "--prompt", "x", "--device", "meta"] + cp,
    ]


def batch_cases(p: dict[str, Path]) -> list[list[str]]:
    out = ["--out", str(p["root"] / "batch-out")]
    cp = ["--checkpoint", "{cascade}"]
    return [
        ["batch", "--prompts", str(p["missing"])] + out + cp,
        ["batch", "--prompts", str(p["dir"])] + out + cp,
        ["batch", "--prompts", "{prompts_bad_ext}"] + out + cp,
        ["batch", "--prompts", "{prompts_dup}"] + out + cp,
        ["batch", "--prompts", "{prompts_csv_noheader}"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--out", str(p["file"])] + cp,
        ["batch", "--prompts", "{prompts_ok}", "--per-prompt", "0"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--per-prompt", "-2"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--batch-size", "0"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--seed", "-5"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--format", "tar"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--size", "48"] + out + cp,
        ["batch", "--prompts", "{prompts_ok}", "--checkpoint", str(p["missing"])] + out,
        ["batch", "--prompts", "{prompts_ok}", "--per-prompt", "many"] + out + cp,
        ["batch"] + out,
    ]


def data_cases(p: dict[str, Path]) -> list[list[str]]:
    out = ["--out", str(p["root"] / "data-out")]
    return [
        ["data", "world", "--split", "test", "--size", "64", "--count", "1"] + out,
        ["data", "world", "--split", "train", "--size", "0", "--count", "1"] + out,
        ["data", "world", "--split", "train", "--size", "-1", "--count", "1"] + out,
        ["data", "world", "--split", "train", "--size", "8", "--count", "1"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "0"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "-3"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "1", "--seed", "-1"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "1", "--frames", "4"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "1", "--clips", "--frames", "0"] + out,
        ["data", "world", "--split", "train", "--size", "64", "--count", "1", "--out", str(p["file"])],
        ["data", "world", "--split", "train", "--size", "64", "--count", "1", "--workers", "0"] + out,
        ["data", "world", "--split", "train", "--size", "sixty", "--count", "1"] + out,
        ["data", "ingest", str(p["missing"]), "--size", "64"] + out,
        ["data", "ingest", str(p["dir"]), "--size", "0"] + out,
        ["data", "ingest", str(p["dir"]), "--size", "64", "--out", str(p["file"])],
        ["data", "nothing"],
    ]


def other_cases(p: dict[str, Path]) -> list[list[str]]:
    return [
        ["eval", "--checkpoint", "{cascade}", "--n", "0"],
        ["eval", "--checkpoint", "{cascade}", "--n", "-1"],
        ["eval", "--checkpoint", "{cascade}", "--split", "test"],
        ["eval", "--checkpoint", "{cascade}", "--batch-size", "0"],
        ["eval", "--checkpoint", "{cascade}", "--steps", "0"],
        ["eval", "--checkpoint", str(p["missing"])],
        ["eval", "--checkpoint", "{cascade}", "--size", "48"],
        ["eval", "--checkpoint", "{cascade}", "--sr", "64"],
        ["eval", "--checkpoint", "{cascade}", "--sr", "x"],
        ["export", str(p["missing"]), "--out", str(p["root"] / "x")],
        ["export", str(p["dir"]), "--out", str(p["root"] / "x")],
        ["export", str(p["file"]), "--out", str(p["root"] / "x")],
        ["export", str(p["dir"]), "--out", str(p["root"] / "x"), "--dtype", "fp8"],
        ["nonsense"],
        [],
    ]


def all_cases(p: dict[str, Path]) -> list[list[str]]:
    return render_cases(p) + batch_cases(p) + data_cases(p) + other_cases(p)


def fill(args: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) if "{" in a and a.endswith("}") else a for a in args]


def test_every_bad_command_line_is_one_line(tiny_cascade: Path, places: dict[str, Path], capsys, monkeypatch) -> None:
    root = places["root"]
    files = {
        "prompts_bad_ext": ("p.yaml", "prompt: x\n"),
        "prompts_dup": ("dup.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n'),
        "prompts_csv_noheader": ("noheader.csv", "a red cube\n"),
        "prompts_ok": ("ok.txt", "a red cube\n"),
    }
    values = {"cascade": str(tiny_cascade)}
    for key, (name, text) in files.items():
        (root / name).write_text(text)
        values[key] = str(root / name)
    monkeypatch.chdir(root)
    cases = all_cases(places)
    assert len(cases) >= 75
    for args in cases:
        try:
            status = cascade_main(fill(args, values))
        except SystemExit as exit_:  # argparse's usage errors
            status = exit_.code
        line = one_line_error(capsys, status, args[:6])
        assert line.startswith("cascade"), (args, line)


CONFIG_CASES = {
    "unknown top-level key": "max_step: 10\n",
    "unknown nested key": "data: {batchsize: 4}\n",
    "wrong type": "max_steps: ten\n",
    "bool for int": "max_steps: true\n",
    "negative steps": "max_steps: -1\n",
    "zero checkpoint_every": "checkpoint_every: 0\n",
    "nan lr": "optim: {lr: .nan}\n",
    "negative lr": "optim: {lr: -0.1}\n",
    "inf lr": "optim: {lr: .inf}\n",
    "bad betas": "optim: {betas: [0.9]}\n",
    "negative batch": "data: {batch_size: -4}\n",
    "zero batch": "data: {batch_size: 0}\n",
    "bad image fraction": "data: {image_fraction: 1.5}\n",
    "tiny crop": "data: {crop: 2}\n",
    "unknown split": "data: {world_split: test}\n",
    "unknown preset": "preset: imagen-9000\n",
    "stage not a mapping": "stage: base\n",
    "negative resolution": "stage: {resolution: -64}\n",
    "odd resolution": "stage: {resolution: 63}\n",
    "bad prediction": "stage: {prediction: score}\n",
    "bad drop prob": "stage: {text_drop_prob: 2}\n",
    "frames without temporal": "stage: {frames: 8}\n",
    "low_res without channels": "stage: {low_resolution: 32}\n",
    "first-frame residual on an image stage": "stage: {first_frame_residual_scale: 0.3}\n",
    "unet levels mismatch": "stage: {unet: {channel_mults: [1, 2]}}\n",
    "unet unknown key": "stage: {unet: {channels: 64}}\n",
    "ema decay": "ema_decay: 1.5\n",
    "not a mapping": "- a\n- b\n",
    "yaml syntax": "data: {batch_size: [4\n",
    "python tag": "max_steps: !!python/object/apply:os.system ['true']\n",
    "missing deepspeed json": "deepspeed: configs/deepspeed/none.json\n",
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_every_bad_config_is_one_line(name: str, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG_CASES[name])
    status = train_main(["--stage", "base", "--config", str(config), "--out", str(tmp_path / "run")])
    line = one_line_error(capsys, status)
    assert line.startswith("train_stage.py: error:")


@pytest.mark.parametrize(
    "args",
    [
        ["--stage", "nope"],
        ["--stage", "base", "--max-steps", "0"],
        ["--stage", "base", "--max-steps", "-5"],
        ["--stage", "base", "--max-minutes", "0"],
        ["--stage", "base", "--max-minutes", "nan"],
        ["--stage", "base", "--config", "/does/not/exist.yaml"],
        ["--stage", "base", "--config", "/tmp"],
        ["--stage", "base", "--resume", "--out", "/does/not/exist"],
    ],
)
def test_bad_training_command_lines(args: list[str], capsys) -> None:
    try:
        status = train_main(args)
    except SystemExit as exit_:
        status = exit_.code
    one_line_error(capsys, status)


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("max_steps: 10 # caf\xe9\n".encode("latin-1"))
    one_line_error(capsys, train_main(["--stage", "base", "--config", str(config)]))


@pytest.mark.parametrize("module", ["clip_eval", "prior_eval"])
def test_an_evaluation_too_small_for_retrieval_is_one_line(module: str, capsys) -> None:
    import importlib

    main = importlib.import_module(f"cascade.evaluation.{module}").main
    error = one_line_error(capsys, main(["--count", "20"]), module)
    assert "--count 20 is too small" in error and "100 candidates" in error
