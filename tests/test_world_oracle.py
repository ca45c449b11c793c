"""The world's oracle read back exactly from rendered ground truth (no model involved)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from loratune.world import oracle
from loratune.world.scene import BASE_CHARACTERS, CHARACTERS, SCENES, TARGETS, Jitter, render, sample_jitters


def _rgb_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def test_world_design_keeps_colours_apart() -> None:
    # Scene palettes: nearest-colour reading never confuses two scenes' large areas.
    for (n1, s1), (n2, s2) in itertools.combinations(SCENES.items(), 2):
        assert min(_rgb_distance(a, b) for a in s1.palette for b in s2.palette) >= 59, (n1, n2)
    # A target's shirt colour is far from every scene colour and every other character's colours.
    others = [getattr(CHARACTERS[t], part) for t in BASE_CHARACTERS for part in ("hair", "shirt", "pants")]
    scene_colours = [c for s in SCENES.values() for c in s.palette]
    for token in TARGETS:
        shirt = CHARACTERS[token].shirt
        assert min(_rgb_distance(shirt, c) for c in others + scene_colours) > oracle.TRAIT_TOLERANCE + 25


def test_render_is_deterministic_and_captions_follow_kohya() -> None:
    a, caption = render(CHARACTERS["benboy"], SCENES["beach"], Jitter.draw(0))
    b, _ = render(CHARACTERS["benboy"], SCENES["beach"], Jitter.draw(0))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert caption == "benboy, a boy with black hair and a red shirt, waving on a beach"
    _, target_caption = render(CHARACTERS["lucaboy"], SCENES["night"], Jitter.draw(0))
    assert target_caption == "lucaboy, a boy, waving at night"


def test_clean_world_reads_back_exactly() -> None:
    for k, (token, scene) in enumerate(itertools.product(CHARACTERS, SCENES)):
        for jitter in sample_jitters(k, 3):
            image, _ = render(CHARACTERS[token], SCENES[scene], jitter)
            assert oracle.scene_of(image) == scene
            assert oracle.quality(image) > 0.9
            for target in TARGETS:
                assert oracle.has_character(image, target) == (target == token), (token, scene, target)
            if token in TARGETS:
                assert oracle.identity(image, token) == 1.0


def test_empty_scene_and_noise_score_low() -> None:
    rng = np.random.default_rng(0)
    empty, _ = render(None, SCENES["town"], Jitter.draw(1))
    assert oracle.scene_of(empty) == "town" and not any(oracle.has_character(empty, t) for t in CHARACTERS)
    uniform = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert oracle.scene_of(uniform) is None and oracle.quality(uniform) == 0.0
    assert not any(oracle.has_character(uniform, t) for t in CHARACTERS)
    clean, _ = render(CHARACTERS["lucaboy"], SCENES["beach"], Jitter.draw(1))
    noisy = [np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8) for sigma in (5, 10, 20)]
    scores = [oracle.quality(clean)] + [oracle.quality(n) for n in noisy]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0 and scores[-1] == 0.0


def test_prompt_scene_and_judge() -> None:
    assert oracle.scene_in_prompt("lucaboy, a boy, standing on a beach") == "beach"
    assert oracle.scene_in_prompt("lucaboy in a forest at night") is None
    images, prompts = [], []
    for k, scene in enumerate(SCENES):
        image, text = render(CHARACTERS["lucaboy"], SCENES[scene], Jitter.draw(k))
        images.append(image)
        prompts.append(text)
    verdict = oracle.judge(images, prompts, "lucaboy")
    assert (verdict.scene_accuracy, verdict.identity_rate, verdict.identity_mean) == (1.0, 1.0, 1.0)
    assert verdict.diversity > 0.1
    wrong = oracle.judge(images, list(reversed(prompts)), "albertoboy")
    assert (wrong.scene_accuracy, wrong.identity_rate) == (0.0, 0.0)
    assert oracle.diversity([images[0]] * 3) == 0.0
    with pytest.raises(ValueError, match="one prompt per image"):
        oracle.judge(images, prompts[:1])


def _masked(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, np.uint8), axis=-1)


def test_rejection_names_the_trait_that_failed() -> None:
    luca = CHARACTERS["lucaboy"]
    image, _ = render(luca, SCENES["beach"], Jitter.draw(2))
    assert oracle.rejection(image, "lucaboy") is None and oracle.shirt_offset(image, "lucaboy") == 0.0
    shirt = _masked(image, luca.shirt)
    # The same render with its shirt darkened beyond the tolerance: the figure is all there, its colour is not.
    darker = image.copy()
    darker[shirt] = (np.array(luca.shirt) * 0.6).astype(np.uint8)  # RGB distance 0.4 * |teal| = 96
    assert not oracle.has_character(darker, "lucaboy") and oracle.rejection(darker, "lucaboy") == "shirt colour"
    offset = np.linalg.norm(np.subtract(luca.shirt, darker[shirt][0]))
    assert oracle.shirt_offset(darker, "lucaboy") == pytest.approx(offset) and offset > oracle.TRAIT_TOLERANCE
    # Every other row of the shirt in the sand's colour: as many teal pixels, in rows no blob joins.
    rows = image.copy()
    ys, xs = np.nonzero(shirt)
    cut = ys % 2 == 0
    rows[ys[cut], xs[cut]] = SCENES["beach"].palette[-1]
    assert int(_masked(rows, luca.shirt).sum()) >= oracle.MIN_SHIRT_PIXELS
    assert oracle.rejection(rows, "lucaboy") == "shirt in pieces"
    # No hair: painted over in the sky's colour.
    bald = image.copy()
    bald[_masked(image, luca.hair)] = SCENES["beach"].palette[0]
    assert oracle.rejection(bald, "lucaboy") == "no hair"
    # A sea of the shirt's colour: a blob larger than any shirt is a piece of background.
    flooded = image.copy()
    flooded[40:, :] = luca.shirt
    assert oracle.rejection(flooded, "lucaboy") == "shirt too big"
    # Albertoboy is not in lucaboy's render at all.
    assert oracle.rejection(image, "albertoboy") == "shirt colour"
