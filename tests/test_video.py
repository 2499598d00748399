"""The video path: joint image-clip training from an image checkpoint, and ``cascade render --video``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from conftest import CASCADE, ROOT, run_command


def render_clip(release: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_command(CASCADE + ["render", "--video", "--prompt", "three glass spheres falling into the ocean at sunset",
                                  "--checkpoint", str(release), "--out", str(out), *extra], ROOT)


def gif_frames_and_milliseconds(path: Path) -> tuple[int, int]:
    """Stored frames and total play time of a GIF (identical neighbours are stored once, longer)."""
    from PIL import Image

    image, frames, total = Image.open(path), 0, 0
    while True:
        frames += 1
        total += image.info.get("duration", 0)
        try:
            image.seek(image.tell() + 1)
        except EOFError:
            return frames, total


def test_render_a_gif_and_an_mp4(tiny_video_cascade: Path, tmp_path: Path) -> None:
    render_clip(tiny_video_cascade, tmp_path / "a.gif", "--frames", "4", "--fps", "8", "--seed", "3", "--save-frames")
    stored, milliseconds = gif_frames_and_milliseconds(tmp_path / "a.gif")
    assert 1 <= stored <= 4 and milliseconds == 4 * 125
    assert json.loads((tmp_path / "a.gif.json").read_text())["frames"] == 4
    frames = [iio.imread(tmp_path / f"a-frame{i:02d}.png") for i in range(4)]
    assert all(frame.shape == (32, 32, 3) for frame in frames)
    render_clip(tiny_video_cascade, tmp_path / "b.gif", "--frames", "4", "--fps", "8", "--seed", "3")
    assert (tmp_path / "b.gif").read_bytes() == (tmp_path / "a.gif").read_bytes()  # same seed, same clip
    render_clip(tiny_video_cascade, tmp_path / "c.mp4", "--frames", "4", "--fps", "4")
    import imageio.v2 as imageio2

    with imageio2.get_reader(tmp_path / "c.mp4", "ffmpeg") as reader:
        assert reader.count_frames() == 4
        assert reader.get_meta_data()["codec"] == "h264"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0", "--out", "x.gif"], "--frames must be at least 1"),
        (["--frames", "99", "--out", "x.gif"], "more than this video stage can make"),
        (["--out", "x.avi"], "unknown output extension '.avi'"),
        (["--fps", "0", "--out", "x.gif"], "fps must be between 1 and 120"),
    ],
)
def test_bad_video_requests(tiny_video_cascade: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(CASCADE + ["render", "--video", "--prompt", "a cube", "--checkpoint", str(tiny_video_cascade),
                                       *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_batch_job_of_clips_matches_single_renders_and_resumes(tiny_video_cascade: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "clips.txt"
    prompts.write_text("three glass spheres falling into the ocean at sunset\na red cube moving left in the desert\n")
    command = CASCADE + ["batch", "--video", "--frames", "4", "--prompts", str(prompts), "--checkpoint",
                         str(tiny_video_cascade), "--per-prompt", "2", "--batch-size", "3"]
    first = run_command(command + ["--out", str(tmp_path / "a")], ROOT)
    assert "done 4, skipped as already done 0, failed 0" in first.stdout
    rows = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["file"].endswith(".gif") for row in rows)
    for row in rows:
        stored, milliseconds = gif_frames_and_milliseconds(tmp_path / "a" / row["file"])
        assert 1 <= stored <= 4 and milliseconds > 0
    again = run_command(command + ["--out", str(tmp_path / "a")], ROOT)
    assert "done 0, skipped as already done 4, failed 0" in again.stdout
    one_by_one = run_command(command[:-1] + ["1", "--out", str(tmp_path / "b")], ROOT)  # batch size 1
    assert "failed 0" in one_by_one.stdout
    for row in rows:
        assert (tmp_path / "b" / row["file"]).read_bytes() == (tmp_path / "a" / row["file"]).read_bytes()


def test_the_motion_verbs_benchmark_reads_every_verb_back(tiny_video_cascade: Path, tmp_path: Path) -> None:
    out = tmp_path / "motion_verbs.json"
    run_command([sys.executable, "benchmarks/motion_verbs.py", "--checkpoint",
                 str(tiny_video_cascade), "--seeds", "0", "--out", str(out)], ROOT)
    clips = json.loads(out.read_text())["clips"]
    assert len(clips) == 2 * 5  # two subjects, five verbs, one seed
    for verb in ("falling", "rising", "moving left", "moving right", "standing still"):
        assert sum(f" {verb} in the " in clip["prompt"] for clip in clips) == 2
    motions = {"still", "falling", "rising", "moving left", "moving right", "nothing seen"}
    assert all(clip["motion"] in motions for clip in clips)
    assert json.loads(out.read_text())["right"] == sum(clip["right"] for clip in clips)


def test_the_verb_margin_benchmark_classifies_each_clip_over_the_five_motions(tiny_video_cascade: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "verb_margin.json"
    run_command([sys.executable, "benchmarks/verb_margin.py", "--checkpoint", str(tiny_video_cascade),
                 "--clips", "3", "--times", "0.5,0.9", "--out", str(out)], ROOT)
    report = json.loads(out.read_text())
    motions = ["still", "falling", "rising", "moving left", "moving right"]
    assert report["clips"] == 3 and report["times"] == [0.5, 0.9]
    for result in report["results"]:
        errors = result["errors"]
        assert len(errors) == 5 and all(0 < e < float("inf") for e in errors)
        assert result["guess"] == motions[errors.index(min(errors))]
        # the five captions differ only in the first group's motion phrase
        stripped = {c.replace("standing still", "M").replace("falling", "M").replace("rising", "M")
                    .replace("moving left", "M").replace("moving right", "M") for c in result["captions"]}
        assert len(stripped) == 1 and len(set(result["captions"])) == 5
    assert report["right"] == sum(r["guess"] == r["motion"] for r in report["results"])


def test_verb_margin_errors_share_their_noise_across_captions(tiny_video_cascade: Path) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from verb_margin import clip_errors

    from cascade.pipeline import Cascade
    from data_pipeline.world import render_clip, sample_scene

    cascade = Cascade.load(tiny_video_cascade, video=True)
    clip = render_clip(sample_scene("eval", 0, clip=True, frames=8), cascade.video.config.resolution)
    prompt = "a red cube falling in the desert during the day"
    errors = clip_errors(cascade.video, cascade, clip, [prompt, prompt], [0.6], torch.Generator().manual_seed(0))
    assert errors.shape == (2,)
    torch.testing.assert_close(errors[0], errors[1])  # same caption, same noise: same error


def test_the_first_frame_use_benchmark_reports_each_frame_with_and_without_the_frame(tiny_video_cascade: Path,
                                                                                      tmp_path: Path) -> None:
    out = tmp_path / "first_frame_use.json"
    run_command([sys.executable, "benchmarks/first_frame_use.py", "--checkpoint", str(tiny_video_cascade),
                 "--clips", "2", "--times", "0.5,0.9", "--out", str(out)], ROOT)
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and [level["time"] for level in report["levels"]] == [0.5, 0.9]
    for level in report["levels"]:
        assert len(level["given"]) == len(level["none"]) == 4  # the tiny stage's frames
        assert all(e > 0 for e in level["given"] + level["none"])
        assert level["frame0_kept"] == pytest.approx(1 - level["given"][0] / level["none"][0])


def test_first_frame_use_compares_the_same_noisy_clip_with_and_without_the_frame(tiny_video_cascade: Path) -> None:
    """With the first-frame input weights at zero the frame cannot matter: both ways give the same
    errors; with them set, only the given frame changes the estimate."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from first_frame_use import frame_errors

    from cascade.pipeline import Cascade
    from data_pipeline.world import render_clip, sample_scene

    cascade = Cascade.load(tiny_video_cascade, video=True)
    stage = cascade.video
    clip = render_clip(sample_scene("eval", 0, clip=True, frames=4), stage.config.resolution)
    prompt = "a red cube falling in the desert during the day"
    weight = stage.network.input_conv.weight
    with torch.no_grad():
        weight[:, 3:] = 0
    unused = frame_errors(stage, cascade, clip, prompt, [0.5, 0.9], torch.Generator().manual_seed(0))
    assert unused.shape == (2, 2, 4)
    torch.testing.assert_close(unused[:, 0], unused[:, 1])
    with torch.no_grad():
        weight[:, 3:] = 0.5
    used = frame_errors(stage, cascade, clip, prompt, [0.5, 0.9], torch.Generator().manual_seed(0))
    assert not torch.allclose(used[:, 0], used[:, 1])
    torch.testing.assert_close(used[:, 1], unused[:, 1])  # without the frame, its weights play no part


def test_a_stage_diffusing_the_change_from_the_first_frame_holds_that_frame(tiny_video_cascade: Path,
                                                                            tmp_path: Path) -> None:
    """``first_frame_residual_scale``: the sampled change is added back to the frame the base drew, so a
    network whose estimate of the change is always zero renders that frame in every frame of the clip."""
    import shutil

    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    from cascade.pipeline import Cascade

    release = tmp_path / "release"
    shutil.copytree(tiny_video_cascade, release)
    video = release / "video"
    config = yaml.safe_load((video / "config.yaml").read_text())
    config.update(first_frame_residual_scale=0.25, prediction="x0")  # x0 prediction: a zero output is a zero change
    (video / "config.yaml").write_text(yaml.safe_dump(config))
    weights = load_file(str(video / "ema.safetensors"))
    for name in ("network.output.2.weight", "network.output.2.bias"):
        weights[name] = torch.zeros_like(weights[name])
    save_file(weights, str(video / "ema.safetensors"))

    cascade = Cascade.load(release, video=True)
    assert cascade.video.config.first_frame_residual_scale == 0.25
    settings = cascade.settings()
    (image,) = cascade.render(["a red cube in the desert during the day"], [5], 16, settings, progress=False)
    (clip,) = cascade.render(["a red cube in the desert during the day"], [5], 16, settings, frames=4, progress=False)
    assert clip.shape == (1, 4, 3, 16, 16) and image.abs().sum() > 0
    for frame in range(4):
        torch.testing.assert_close(clip[0, frame], image[0])


def test_a_video_text_encoder_is_read_by_the_video_stage_and_not_by_the_first_frame(tiny_video_cascade: Path,
                                                                                     tmp_path: Path) -> None:
    """``video_text_encoder`` in cascade.yaml: the video stage reads the prompt through it (a CLIP
    taught the motion words), the base drawing the first frame through the image stages' encoder."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from cascade.pipeline import Cascade

    release = tmp_path / "release"
    shutil.copytree(tiny_video_cascade, release)
    taught = release / "clip-taught"
    shutil.copytree(release / "clip", taught)
    weights = load_file(str(taught / "open_clip_model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    weights["token_embedding.weight"] += 0.5 * torch.randn(weights["token_embedding.weight"].shape, generator=generator)
    save_file(weights, str(taught / "open_clip_model.safetensors"))
    with open(release / "cascade.yaml", "a") as f:
        f.write("video_text_encoder: clip:local-dir:clip-taught\n")

    plain, cascade = Cascade.load(tiny_video_cascade, video=True), Cascade.load(release, video=True)
    prompts = ["a red cube falling in the desert during the day"]
    assert torch.equal(cascade.encode_text(prompts).text_tokens, plain.encode_text(prompts).text_tokens)
    video_tokens = cascade.encode_text(prompts, for_video=True).text_tokens
    assert not torch.allclose(video_tokens, plain.encode_text(prompts, for_video=True).text_tokens)

    read: dict[str, torch.Tensor] = {}
    run_base = cascade.run_base

    def recording_run_base(stage, text, *args, **kwargs):  # what each stage was given to read
        read[stage.config.name] = text.text_tokens.clone()
        return run_base(stage, text, *args, **kwargs)

    cascade.run_base = recording_run_base
    size = cascade.video.config.resolution
    clip = cascade.render(prompts, [0], size, cascade.settings(steps=[2]), frames=4, progress=False)[0]
    assert clip.shape == (1, 4, 3, size, size)
    base_name, video_name = cascade.stages[0].config.name, cascade.video.config.name
    torch.testing.assert_close(read[base_name], plain.encode_text(prompts).text_tokens)
    torch.testing.assert_close(read[video_name], video_tokens)
