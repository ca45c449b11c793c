"""Technical quality through pyiqa: the weight-free PIQE ranks clean above degraded; MUSIQ runs on stand-in weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.registry import create_backend

RUNTIME = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)


def _score(name: str, images: list[Image.Image], **options):
    backend = create_backend(BackendConfig(name=name, **options), RUNTIME, "quality")
    backend.load()
    backend.setup(References())
    backend.update([EvalImage(Path(f"{i}.png"), img) for i, img in enumerate(images)])
    return backend, backend.compute()


def test_piqe_ranks_clean_above_blurred_and_noisy() -> None:
    clean = Image.fromarray(data.astronaut())
    blurred = clean.filter(ImageFilter.GaussianBlur(3))
    pixels = np.asarray(clean).astype(np.float64) + np.random.default_rng(0).normal(0, 25, np.asarray(clean).shape)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    backend, result = _score("piqe", [clean, blurred, noisy])
    assert not result.stand_in and not backend.spec.higher_is_better
    clean_s, blurred_s, noisy_s = result.per_image
    assert clean_s < blurred_s and clean_s < noisy_s  # lower PIQE = better
    assert result.value == pytest.approx((clean_s + blurred_s + noisy_s) / 3)


def test_musiq_runs_through_pyiqa_on_stand_in_weights() -> None:
    image = Image.fromarray(data.astronaut()).resize((96, 96))
    backend, result = _score("musiq", [image, image.rotate(90)])
    # No network here: pyiqa cannot fetch the KonIQ checkpoint, so the weights are random and labelled so.
    assert result.stand_in and backend.describe()["stand_in_weights"]
    assert len(result.per_image) == 2 and all(np.isfinite(result.per_image))
    assert "non-commercial" in backend.spec.licence
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.quality: cannot load pyiqa 'musiq' weights"):
        create_backend(BackendConfig(name="musiq", require_pretrained=True), RUNTIME, "quality").load()


@pytest.mark.parametrize("name", ["piqe", "musiq"])
def test_a_batch_scores_each_image_as_alone(name: str) -> None:
    astronaut = Image.fromarray(data.astronaut())
    # Two sizes in one batch: the images of each size go through the metric together.
    images = [astronaut.resize((96, 96)), astronaut.resize((64, 80)), astronaut.rotate(90).resize((96, 96)),
              astronaut.resize((96, 96)).filter(ImageFilter.GaussianBlur(2))]  # fmt: skip
    backend, batched = _score(name, images)
    alone = []
    for i, img in enumerate(images):
        backend.reset()
        backend.update([EvalImage(Path(f"{i}.png"), img)])
        alone += backend.compute().per_image
    assert batched.per_image == pytest.approx(alone, abs=1e-5)
    assert len(set(batched.per_image)) == len(images)


def test_offline_pyiqa_never_starts_a_download(monkeypatch, capsys) -> None:
    import huggingface_hub.constants
    from torch.hub import get_dir

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = Path(get_dir()) / "pyiqa"
    before = set(cache.iterdir()) if cache.is_dir() else set()
    expected = (r"^evaluation\.backends\.quality: cannot load pyiqa 'musiq' weights \(OfflineDownloadRefused: "
                r"HF_HUB_OFFLINE=1 and musiq_koniq_ckpt-\w+\.pth is not in pyiqa's cache .*nothing was downloaded")
    with pytest.raises(LoratuneError, match=expected):
        create_backend(BackendConfig(name="musiq", require_pretrained=True), RUNTIME, "quality").load()
    assert (set(cache.iterdir()) if cache.is_dir() else set()) == before  # no partial download left behind
    assert "Downloading" not in capsys.readouterr().out  # pyiqa's own print stays off stdout unless -v


def test_generic_pyiqa_takes_range_and_direction_from_pyiqa() -> None:
    backend = create_backend(BackendConfig(name="pyiqa", metric="piqe"), RUNTIME, "quality")
    assert backend.spec.higher_is_better is False and backend.spec.score_range == (0.0, 100.0)
    with pytest.raises(LoratuneError, match="evaluation.backends.quality.metric"):
        create_backend(BackendConfig(name="pyiqa", metric="nope"), RUNTIME, "quality")
    with pytest.raises(LoratuneError, match="reference"):
        create_backend(BackendConfig(name="pyiqa", metric="lpips"), RUNTIME, "quality")


class _RunsCodeWhenUnpickled:
    """What a booby-trapped checkpoint holds: unpickling it calls ``Path.touch`` (any callable would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_user_checkpoint_is_checked_before_pyiqa_unpickles_it(tmp_path: Path) -> None:
    # pyiqa reads checkpoints with torch.load(weights_only=False): ours must refuse a file that would run code.
    marker = tmp_path / "code-ran"
    trap = tmp_path / "musiq.pth"
    torch.save({"params": _RunsCodeWhenUnpickled(marker)}, trap)
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.quality\.model: not a plain weights checkpoint"):
        create_backend(BackendConfig(name="musiq", model=str(trap)), RUNTIME, "quality").load()
    assert not marker.exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"params": {"not": torch.zeros(1)}}, wrong)
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.quality\.model: cannot load .*wrong\.pth"):
        create_backend(BackendConfig(name="musiq", model=str(wrong)), RUNTIME, "quality").load()
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.quality\.model: pyiqa checkpoint not found"):
        create_backend(BackendConfig(name="musiq", model=str(tmp_path / "typo.pth")), RUNTIME, "quality")


@pytest.mark.parametrize(("name", "metric"), [("musiq", "musiq"), ("piqe", "piqe"), ("pyiqa", "musiq")])
def test_registry_rows_agree_with_pyiqa(name: str, metric: str) -> None:
    from importlib.metadata import metadata

    from loratune.metrics.quality import pyiqa_metric_info
    from loratune.metrics.registry import BACKENDS

    spec = BACKENDS[name]
    assert (spec.score_range, spec.higher_is_better) == pyiqa_metric_info(metric)
    assert metadata("pyiqa")["License-Expression"] == "PolyForm-Noncommercial-1.0.0"
    assert "PolyForm Noncommercial 1.0.0" in spec.licence and "non-commercial" in spec.licence



def test_piqe_rates_a_clean_flat_shaded_render_worst_and_its_grainy_copy_better() -> None:
    """Why PIQE inverts on flat-shaded styles (the known-truth world, cel shading): it scores only "active" blocks
    and gives an image without any the worst score, exactly as it does a blurred photo — and mild grain activates
    every block. PIQE cannot tell clean-and-smooth from blurred; the study's quality check flags it (``quality_check``)."""
    from loratune.world.scene import CHARACTERS, SCENES, Jitter, render

    image, _ = render(CHARACTERS["lucaboy"], SCENES["beach"], Jitter.draw(0))
    smooth = Image.fromarray(image).resize((512, 512), Image.Resampling.BICUBIC)
    pixels = np.asarray(smooth, dtype=np.float64) + np.random.default_rng(0).normal(0, 4, (512, 512, 3))
    grainy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    _, result = _score("piqe", [smooth, grainy])
    assert result.per_image[0] == pytest.approx(100.0) and result.per_image[1] < 50
