"""Scenes, sampling, splits and held-out combinations of the shapes world (design/WORLD.md)."""

from __future__ import annotations

from collections import Counter

import pytest

from cascade.errors import UserError
from data_pipeline.world import (
    HELDOUT_RULES,
    SPLITS,
    Group,
    Scene,
    heldout_combinations,
    is_heldout,
    layout_problems,
    sample_scene,
)
from data_pipeline.world.constants import (
    COLOURS,
    GROUNDS,
    MOTIONS,
    RELATIONS,
    SHAPES,
    TIMES,
)


def test_splits_constant():
    assert SPLITS == ("train", "eval", "heldout")


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("clip", [False, True])
def test_sampling_is_a_pure_function_of_split_and_seed(split, clip):
    for seed in (0, 1, 12345, 2**40):
        a = sample_scene(split, seed, clip=clip)
        b = sample_scene(split, seed, clip=clip)
        assert a == b and a.to_json() == b.to_json()
    assert sample_scene(split, 0, clip=clip) != sample_scene(split, 1, clip=clip)


def test_split_streams_are_disjoint():
    seen = {split: {sample_scene(split, s).to_json().split('"seed"')[0] for s in range(300)} for split in SPLITS}
    assert not seen["train"] & seen["eval"]
    assert not seen["train"] & seen["heldout"]
    # same seed, different split: different scenes
    assert all(sample_scene("train", s).groups != sample_scene("eval", s).groups for s in range(50))


@pytest.mark.parametrize("clip", [False, True])
def test_json_round_trip(clip):
    for split in SPLITS:
        for seed in range(40):
            scene = sample_scene(split, seed, clip=clip)
            back = Scene.from_json(scene.to_json())
            assert back == scene
            assert back.to_json() == scene.to_json()


@pytest.mark.parametrize("frames", [1, 2, 8, 15, 17, 24])
def test_layout_rules_hold_in_every_frame(frames):
    for split in SPLITS:
        for seed in range(120):
            scene = sample_scene(split, seed, clip=True, frames=frames)
            assert scene.frames == frames
            assert layout_problems(scene) == [], (split, seed)


def test_images_are_still_and_one_frame():
    for seed in range(100):
        scene = sample_scene("train", seed)
        assert scene.frames == 1 and not scene.is_clip
        assert all(g.motion == "still" for g in scene.groups)


def test_long_clips_fall_back_to_still():
    # 0.05 per frame over 24 frames is longer than the canvas allows for any size
    for seed in range(30):
        assert all(g.motion == "still" for g in sample_scene("train", seed, clip=True, frames=24).groups)


def test_group_structure_follows_the_contract():
    for seed in range(500):
        scene = sample_scene("train", seed, clip=seed % 2 == 1)
        assert len(scene.groups) in (1, 2)
        if len(scene.groups) == 2:
            assert scene.relation in RELATIONS
            assert all(g.count == 1 for g in scene.groups)
            a, b = scene.groups
            assert (a.colour, a.shape) != (b.colour, b.shape)
        else:
            assert scene.relation is None and scene.groups[0].count in (1, 2, 3)
        bg = scene.background
        assert (bg.sun_x is not None) == (scene.time == "sunset")
        assert (30 <= len(bg.stars) <= 60) if scene.time == "night" else not bg.stars
        assert (6 <= len(bg.waves) <= 10) if scene.ground == "ocean" else not bg.waves
        assert (2 <= len(bg.dunes) <= 4) if scene.ground == "desert" else not bg.dunes
        assert (40 <= len(bg.blades) <= 80) if scene.ground == "grass" else not bg.blades
        if bg.sun_x is not None:
            assert 0.2 <= bg.sun_x <= 0.8


def test_every_value_occurs():
    scenes = [sample_scene("train", s, clip=True) for s in range(1500)]
    groups = [g for s in scenes for g in s.groups]
    assert set(Counter(s.time for s in scenes)) == set(TIMES)
    assert set(Counter(s.ground for s in scenes)) == set(GROUNDS)
    assert {s.relation for s in scenes} == set(RELATIONS) | {None}
    assert {g.colour for g in groups} == set(COLOURS)
    assert {g.shape for g in groups} == set(SHAPES)
    assert {g.motion for g in groups} == set(MOTIONS)
    assert {g.count for g in groups} == {1, 2, 3}
    assert {g.size for g in groups} == {"small", "large"}
    assert {g.material for g in groups} == {"solid", "glass"}


def test_no_heldout_combination_in_100000_train_scenes():
    # scenes are sampled, not rendered; half images, half 8-frame clips (rule 4 needs motion)
    found = [s for s in range(100_000) if is_heldout(sample_scene("train", s, clip=s % 2 == 1))]
    assert found == []


def test_eval_never_and_heldout_always_holds_a_heldout_combination():
    rules = Counter()
    for s in range(2000):
        assert not is_heldout(sample_scene("eval", s, clip=s % 2 == 1))
        held = sample_scene("heldout", s, clip=s % 2 == 1)
        assert is_heldout(held)
        rules.update(heldout_combinations(held))
    assert set(rules) == set(HELDOUT_RULES)  # every combination is represented


def test_heldout_rules_match_their_descriptions():
    def scene(colour, shape, material="solid", ground="grass", time="day", motion="still", frames=1):
        g = Group(count=1, colour=colour, shape=shape, size="small", material=material,
                  positions=((0.5, 0.3),), motion=motion)
        return Scene(time=time, ground=ground, groups=(g,), frames=frames)

    assert heldout_combinations(scene("purple", "star")) == ["purple star"]
    assert not is_heldout(scene("purple", "cube"))
    assert heldout_combinations(scene("red", "pyramid", ground="ocean", time="night")) == [
        "pyramid over the ocean at night"]
    assert not is_heldout(scene("red", "pyramid", ground="ocean", time="day"))
    assert heldout_combinations(scene("white", "cube", material="glass")) == ["white glass cube"]
    assert not is_heldout(scene("white", "cube", material="solid"))
    assert heldout_combinations(scene("red", "cube", ground="desert", motion="rising", frames=8)) == [
        "rising in the desert"]
    assert not is_heldout(scene("red", "cube", ground="desert", motion="falling", frames=8))


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: sample_scene("test", 0), "'test'"),
        (lambda: sample_scene("train", -1), "-1"),
        (lambda: sample_scene("train", 0, clip=True, frames=0), "0"),
        (lambda: Group(count=4, colour="red", shape="cube", size="small", material="solid",
                       positions=((0.5, 0.5),) * 4), "4"),
        (lambda: Group(count=1, colour="pink", shape="cube", size="small", material="solid",
                       positions=((0.5, 0.5),)), "'pink'"),
        (lambda: Scene.from_json("{not json"), "JSON"),
    ],
)
def test_bad_values_raise_user_error_naming_them(call, needle):
    with pytest.raises(UserError) as e:
        call()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
