"""Captions of the shapes world: phrasings, synonyms, word dropping, and parsing back."""

from __future__ import annotations

from collections import Counter

import pytest

from cascade.errors import UserError
from data_pipeline.world import (
    CAPTION_STYLES,
    SPLITS,
    Group,
    Scene,
    caption,
    parse_caption,
    sample_scene,
)


def _expected(scene: Scene, material_word_for_solid: bool) -> dict:
    """What an undropped caption of ``scene`` must say, in parse_caption's terms."""
    return {
        "time": scene.time,
        "ground": scene.ground,
        "relation": scene.relation,
        "groups": [
            (g.count, g.size, g.colour,
             "glass" if g.material == "glass" else ("solid" if material_word_for_solid else None),
             g.shape, g.motion if scene.is_clip else None)
            for g in scene.groups
        ],
    }


def _parsed(text: str) -> dict:
    p = parse_caption(text)
    return {
        "time": p.time,
        "ground": p.ground,
        "relation": p.relation,
        "groups": [(g.count, g.size, g.colour, g.material, g.shape, g.motion) for g in p.groups],
    }


def test_at_least_five_styles():
    assert len(CAPTION_STYLES) >= 5 and {"compact", "sentence"} <= set(CAPTION_STYLES)


@pytest.mark.parametrize("style", CAPTION_STYLES)
def test_every_caption_parses_back_to_its_scene(style):
    for split in SPLITS:
        for seed in range(60):
            scene = sample_scene(split, seed, clip=seed % 3 == 0)
            for cap_seed in (0, 1):
                text = caption(scene, style=style, seed=cap_seed)
                assert _parsed(text) == _expected(scene, style == "picture"), text


def test_word_order_and_examples_of_world_md():
    red = Group(count=1, colour="red", shape="cube", size="small", material="glass", positions=((0.2, 0.5),))
    star = Group(count=1, colour="yellow", shape="star", size="large", material="solid", positions=((0.7, 0.5),))
    scene = Scene(time="night", ground="desert", groups=(red, star), relation="left of")
    texts = {caption(scene, style="compact", seed=k) for k in range(40)}
    assert "a small red glass cube to the left of a large yellow star in the desert at night" in texts
    assert "one small red glass box to the left of one large yellow star in the desert at night" in texts

    blue = Group(count=3, colour="blue", shape="sphere", size="large", material="solid",
                 positions=((0.2, 0.2), (0.5, 0.2), (0.8, 0.2)), motion="falling")
    clip = Scene(time="sunset", ground="ocean", groups=(blue,), frames=8, split="train")
    compact = {caption(clip, style="compact", seed=k) for k in range(40)}
    assert "three large blue spheres falling over the ocean at sunset" in compact
    assert "three large blue spheres falling into the ocean at sunset" in compact
    glass = Scene(time="sunset", ground="ocean", groups=(Group(**{**blue.__dict__, "material": "glass"}),),
                  frames=8, split="train")
    dropped = {caption(glass, style="compact", seed=k, drop_words=True) for k in range(400)}
    assert "three blue glass spheres falling into the ocean at sunset" in dropped
    sentences = {caption(glass, style="sentence", seed=k) for k in range(40)}
    assert "Three large blue spheres made of glass falling into the ocean. The sun is setting." in sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Three spheres made of glass falling into the ocean. The sun is setting.",
         {"time": "sunset", "ground": "ocean", "relation": None,
          "groups": [(3, None, None, "glass", "sphere", "falling")]}),
        ("three glass spheres falling into the ocean at sunset",
         {"time": "sunset", "ground": "ocean", "relation": None,
          "groups": [(3, None, None, "glass", "sphere", "falling")]}),
        ("a red cube moving left in the desert during the day",
         {"time": "day", "ground": "desert", "relation": None,
          "groups": [(1, None, "red", None, "cube", "moving left")]}),
        ("an orange box moving left to the left of two balls",
         {"time": None, "ground": None, "relation": "left of",
          "groups": [(1, None, "orange", None, "cube", "moving left"), (2, None, None, None, "sphere", None)]}),
        ("3 big purple triangles on the grass", {"time": None, "ground": "grass", "relation": None,
                                                  "groups": [(3, "large", "purple", None, "pyramid", None)]}),
        ("nothing to see here", {"time": None, "ground": None, "relation": None,
                                 "groups": [(None, None, None, None, None, None)]}),
    ],
)
def test_parse_examples(text, expected):
    assert _parsed(text) == expected


def test_synonyms_all_appear():
    words = Counter()
    for seed in range(400):
        words.update(caption(sample_scene("train", seed), seed=seed).lower().replace(".", " ").replace(",", " ").split())
    for w in ("sphere", "ball", "cube", "box", "pyramid", "triangle", "a", "one", "two", "three",
              "made", "solid", "glass"):
        assert words[w] > 0, w


def test_style_none_picks_every_style_and_is_deterministic():
    scene = sample_scene("eval", 5)
    texts = [caption(scene, seed=k) for k in range(200)]
    assert texts == [caption(scene, seed=k) for k in range(200)]
    explicit = {caption(scene, style=s, seed=k) for s in CAPTION_STYLES for k in range(200)}
    assert set(texts) <= explicit
    assert len({t.split()[0] for t in texts}) >= 4  # the styles start differently


def test_drop_words_rate_and_what_may_drop():
    """Each of size / material / ground / time words drops with probability 0.2
    (binomial: 2000 draws, +-4 sigma = +-0.036); colour, shape and count never drop."""
    drops = Counter()
    n = 2000
    for seed in range(n):
        scene = sample_scene("train", seed % 500, clip=False)
        full = parse_caption(caption(scene, style="compact", seed=seed))
        cut = parse_caption(caption(scene, style="compact", seed=seed, drop_words=True))
        g_full, g_cut = full.groups[0], cut.groups[0]
        assert (g_cut.count, g_cut.colour, g_cut.shape) == (g_full.count, g_full.colour, g_full.shape)
        drops["size"] += g_cut.size is None
        drops["ground"] += cut.ground is None
        drops["time"] += cut.time is None
        if scene.groups[0].material == "glass":
            drops["material"] += g_cut.material is None
            drops["glass"] += 1
    for key in ("size", "ground", "time"):
        assert abs(drops[key] / n - 0.2) < 0.036, (key, drops[key] / n)
    assert abs(drops["material"] / drops["glass"] - 0.2) < 4 * (0.16 / drops["glass"]) ** 0.5


def test_drop_words_is_for_training_only():
    with pytest.raises(UserError, match="eval"):
        caption(sample_scene("eval", 0), drop_words=True)
    with pytest.raises(UserError, match="heldout"):
        caption(sample_scene("heldout", 0), drop_words=True)
    with pytest.raises(UserError, match="'poem'"):
        caption(sample_scene("train", 0), style="poem")
