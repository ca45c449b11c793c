"""The world-trained CLIP, scored through the product's own Evaluator and backends as a world folder configures them."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from PIL import Image

from loratune.modelref import STAND_IN_MARKER
from loratune.records import Sample
from loratune.world.folder import write_world
from loratune.world.scene import CHARACTERS, SCENES, Jitter, caption, render
from loratune.world.scorers import CLIP_DIR, CLIP_INFO

N_IMAGES = 48
TRUE_CAPTION_FLOOR = 0.9  # share of images whose true caption beats a wrong-scene one (measured: see the report)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="module")
def evaluator(world):
    from loratune.config import load_config
    from loratune.evaluation import Evaluator, load_references

    config = load_config(world.config)
    return Evaluator(config, references=load_references(config), show_progress=False)


def _save(folder, images: list[np.ndarray], prompts: list[str], character: str | None = None) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(path, prompt=prompt, seed=i, character=character))
    return samples


def test_committed_clip_matches_its_manifest() -> None:
    info = json.loads(CLIP_INFO.read_text())
    files = {p.name for p in CLIP_DIR.iterdir()}
    assert files == set(info["sha256"])
    for name, digest in info["sha256"].items():
        assert hashlib.sha256((CLIP_DIR / name).read_bytes()).hexdigest() == digest, name


def test_world_folder_marks_only_the_random_scorers(world, evaluator) -> None:
    assert not (world.root / "scorers" / "open_clip" / STAND_IN_MARKER).exists()
    assert (world.root / "scorers" / "aesthetic" / STAND_IN_MARKER).is_file()
    header = world.config.read_text().splitlines()[:3]
    assert any("World-trained" in line and "clipscore" in line and "clip_i" in line for line in header)
    assert evaluator.backends["alignment"].stand_in is False
    assert evaluator.backends["consistency"].stand_in is False
    assert evaluator.backends["aesthetics"].stand_in is True


def test_clipscore_prefers_the_true_scene(evaluator, tmp_path) -> None:
    """Each image against its own caption and against the same caption with another scene (as a sample prompt)."""
    rng = random.Random(7)
    scenes = list(SCENES.values())
    images, true, wrong = [], [], []
    for i in range(N_IMAGES):
        character, scene = rng.choice(list(CHARACTERS.values())), scenes[i % len(scenes)]
        other = rng.choice([s for s in scenes if s is not scene])
        jitter = Jitter.draw(10_000 + i)  # jitters the CLIP never trained on (its seeds come from another stream)
        image, _ = render(character, scene, jitter)
        images.append(image)
        true.append(caption(character, scene, jitter.pose, describe=not character.target))
        wrong.append(caption(character, other, jitter.pose, describe=not character.target))
    right = evaluator.score(_save(tmp_path / "true", images, true)).axes["alignment"].per_image
    off = evaluator.score(_save(tmp_path / "wrong", images, wrong)).axes["alignment"].per_image
    wins = np.mean([r > o for r, o in zip(right, off)])
    assert wins >= TRUE_CAPTION_FLOOR


def test_clip_i_finds_the_target_character(world, evaluator, tmp_path) -> None:
    """Target images are closer to the target's held-out references than images of any other character are."""
    scenes = list(SCENES.values())

    def similarity(token: str) -> float:
        images = [render(CHARACTERS[token], scenes[i % 4], Jitter.draw(20_000 + i))[0] for i in range(8)]
        samples = _save(tmp_path / token, images, [f"{token} {s.phrase}" for s in scenes * 2], world.target)
        return evaluator.score(samples).axes["consistency"].value

    target = similarity(world.target)
    others = {t: similarity(t) for t in CHARACTERS if t != world.target}
    assert target > max(others.values()), (target, others)


@pytest.mark.slow
def test_the_scorer_checks_name_what_the_worlds_scorers_cannot_see(world, tmp_path) -> None:
    """The causes of a composite fooled at the top, found by the product's own checks before a first trial: the world
    CLIP's identity similarity is the palette (the references cut into shuffled tiles score as high as the references
    themselves), and PIQE rates the flat-shaded references below the base model's grainy samples."""
    from loratune.config import load_config
    from loratune.evaluation import Evaluator, load_references
    from loratune.sampling import render_base_samples
    from loratune.scorer_checks import identity_calibration, quality_check
    from loratune.train.cache import BaseCache
    from loratune.train.model import training_precision

    config = load_config(world.config, ["evaluation.backends.quality={name: piqe}"])
    precision = training_precision(config.train)
    with BaseCache().borrow(config, precision) as base:
        render_base_samples(config, base.models, precision, tmp_path / "base")
    evaluator = Evaluator(config, references=load_references(config, negatives_dir=tmp_path / "base"),
                          show_progress=False)
    evaluator.load()
    identity = identity_calibration(evaluator)
    target = identity["characters"][world.target]
    assert (target["negatives"], target["probes"]) == (8, 8)  # 4 prompts x 2 seeds; 2 shuffles of each of 4 refs
    assert target["auc"] == 1.0  # the base model's samples are told apart from the references ...
    assert target["structure_auc"] < 0.5  # ... but the palette without the character scores above the character
    assert any("sees the palette, not the character" in w for w in identity["warnings"])
    quality = quality_check(evaluator)
    assert quality["references"] < quality["base_samples"] and "reads what you want as a defect" in quality["warnings"][0]
    # The world's own quality backend (the noise level) rates the clean references above the base model's samples.
    noise = Evaluator(load_config(world.config), references=evaluator.references, show_progress=False)
    noise.load()
    check = quality_check(noise)
    assert check["references"] > check["base_samples"] and not check["warnings"]


def test_clip_training_can_show_colours_and_figures_apart() -> None:
    """The optional training images (``Settings.anonymous_share``, ``collage_share``): a figure of no one captioned
    without a name, a character's colours with no figure; with both at 0 none of them."""
    from loratune.world.oracle import _mask
    from loratune.world.scorers import palette_collage, world_pairs

    _, texts, labels = world_pairs(3, 200, 0.1, anonymous_share=0.3, collage_share=0.3)
    anonymous = [i for i, lab in enumerate(labels) if lab.startswith("?/")]
    assert 40 <= len(anonymous) <= 80
    for i in anonymous:  # named by what it shows, never by a character's token
        _, scene, pose = labels[i].split("/")
        assert texts[i] in ([f"a boy, {pose} {SCENES[scene].phrase}"], [f"a girl, {pose} {SCENES[scene].phrase}"])
    # the collages (0.3 of 200) and the empty scenes (0.1 of the other 0.4): about 68, never fewer than 45
    assert sum(lab.startswith("-/") for lab in labels) >= 45
    rng, luca = random.Random(0), CHARACTERS["lucaboy"]
    for k in range(20):  # the patches carry the character's colours where the empty scene has none of them
        image, _ = render(None, SCENES["town"], Jitter.draw(k))
        assert _mask(image, luca.shirt).sum() == 0
        palette_collage(image, luca, rng)
        assert _mask(image, luca.shirt).sum() + _mask(image, luca.hair).sum() >= 9  # a patch is at least 3x3
    assert not any(lab.startswith("?/") for lab in world_pairs(3, 50, 0.1)[2])
