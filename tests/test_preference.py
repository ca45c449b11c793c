"""ImageReward and HPSv2: loratune's backends give the packages' own scores on identical stand-in weights.

The packages' scores are recorded in tests/data/preference_reference.json by tests/preference_reference.py (it says
how to install them: neither installs beside loratune's pins); ``hpsv2`` is also run live where it imports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from preference_reference import REFERENCE, hps_scores, reference_inputs
from safetensors.torch import save_file

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, Runtime
from loratune.metrics.registry import BACKENDS, create_backend
from loratune.modelref import write_stand_in_marker
from loratune.tiny.preference import HPS_WEIGHTS, build_hpsv2, build_imagereward

RUNTIME = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=3)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preference")
    folders = {"image_reward": root / "imagereward", "hpsv2": root / "hpsv2"}
    build_imagereward(folders["image_reward"])
    build_hpsv2(folders["hpsv2"])
    for name, folder in folders.items():
        write_stand_in_marker(folder, f"tiny {name}")
    return folders


def make(name: str, model: str | None, **options: object):
    return create_backend(BackendConfig(name=name, model=model, **options), RUNTIME, "aesthetics")


def score(backend) -> list[float | None]:
    images = [EvalImage(Path(f"{i}.png"), image, prompt=prompt) for i, (image, prompt) in enumerate(reference_inputs())]
    backend.load()
    backend.update(images[:3])  # two batches: scores must not depend on how images are batched
    backend.update(images[3:] + [EvalImage(Path("unprompted.png"), images[0].image)])
    return backend.compute().per_image


@pytest.mark.parametrize("name", ["image_reward", "hpsv2"])
def test_scores_equal_the_packages_on_identical_weights(stand_ins, name):
    backend = make(name, str(stand_ins[name]))
    per_image = score(backend)
    expected = json.loads(REFERENCE.read_text())[name]
    assert per_image[:-1] == pytest.approx(expected, abs=1e-4)
    assert per_image[-1] is None  # no prompt, no score; the others' mean is the value
    result = backend.compute()
    assert result.value == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    assert result.stand_in and result.details["images_scored"] == len(expected)
    assert backend.spec.needs_prompts and backend.spec.axis == "aesthetics"


def test_hpsv2_package_live(stand_ins):
    pytest.importorskip("hpsv2.img_score", reason="hpsv2 not installed (see tests/preference_reference.py)")
    live = hps_scores(stand_ins["hpsv2"])
    assert score(make("hpsv2", str(stand_ins["hpsv2"])))[:-1] == pytest.approx(live, abs=1e-4)


def test_image_reward_safetensors_copy_scores_the_same(stand_ins, tmp_path):
    folder = tmp_path / "imagereward"
    shutil.copytree(stand_ins["image_reward"], folder)
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    save_file(state, str(folder / "ImageReward.safetensors"))
    (folder / "ImageReward.pt").unlink()
    assert score(make("image_reward", str(folder)))[:-1] == pytest.approx(
        json.loads(REFERENCE.read_text())["image_reward"], abs=1e-4
    )


class NotWeights:
    pass


def test_pickles_that_need_arbitrary_unpickling_are_refused(stand_ins, tmp_path):
    ir = tmp_path / "imagereward"
    shutil.copytree(stand_ins["image_reward"], ir)
    torch.save({"x": NotWeights()}, ir / "ImageReward.pt")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot load ImageReward from"):
        make("image_reward", str(ir)).load()

    hps = tmp_path / "hpsv2"
    shutil.copytree(stand_ins["hpsv2"], hps)
    torch.save({"state_dict": {"x": NotWeights()}}, hps / HPS_WEIGHTS)
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot load open_clip model"):
        make("hpsv2", str(hps)).load()


def test_bad_references_fail_with_one_line_naming_the_field(stand_ins, tmp_path):
    for name in ("image_reward", "hpsv2"):
        with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: model path not found"):
            make(name, str(tmp_path / "missing"))
    assert make("hpsv2", None).model_id == BACKENDS["hpsv2"].default_model
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot download"):
        make("hpsv2", None).load()  # the default is a file in a hub repo; offline here
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot download"):
        make("image_reward", None).load()
    with pytest.raises(LoratuneError, match=r"holds none of ImageReward\.safetensors, ImageReward\.pt"):
        make("image_reward", str(tmp_path)).load()
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.architecture: unknown open_clip"):
        make("hpsv2", str(stand_ins["hpsv2"] / HPS_WEIGHTS), architecture="ViT-Q-99")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.tokenizer: model path not found"):
        make("image_reward", str(stand_ins["image_reward"]), tokenizer=str(tmp_path / "no-tokenizer"))


def test_factory_stand_ins_are_the_cross_checked_ones(tiny_models):
    expected = json.loads(REFERENCE.read_text())
    for name, folder in (("image_reward", tiny_models.imagereward), ("hpsv2", tiny_models.hpsv2)):
        backend = make(name, str(folder))
        assert score(backend)[:-1] == pytest.approx(expected[name], abs=1e-4)
        assert backend.compute().stand_in  # the factory's marker, not the test's
