"""LAION Aesthetics Predictor V2: the public state-dict layout loads, and outputs equal the plain linear chain."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.aesthetic import AestheticMLP, load_state_dict_file
from loratune.metrics.base import EvalImage, Runtime
from loratune.metrics.registry import create_backend


class PublicMLP(nn.Module):
    """The network as written in improved-aesthetic-predictor's simple_inference.py (minus the Lightning parts)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )


def linear_chain(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x


def make(model: str | None, **options: object):
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=3)
    return create_backend(BackendConfig(name="laion_aesthetic", model=model, **options), runtime, "aesthetics")


@pytest.fixture(scope="module")
def images() -> list[EvalImage]:
    rng = np.random.default_rng(3)
    return [
        EvalImage(Path(f"{i}.png"), Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)))
        for i in range(5)
    ]


def test_public_layout_loads_and_matches_linear_chain(tmp_path):
    torch.manual_seed(0)
    public = PublicMLP(768)
    torch.save(public.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    state = load_state_dict_file(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    assert sorted(state) == sorted(public.state_dict())

    mlp = AestheticMLP.from_state_dict(state)
    assert mlp.input_size == 768
    assert [type(m).__name__ for m in mlp.layers] == [type(m).__name__ for m in public.layers]
    assert [m.p for m in mlp.layers if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.1]
    x = torch.nn.functional.normalize(torch.randn(6, 768), dim=-1)
    with torch.no_grad():
        assert torch.equal(mlp(x), linear_chain(state, x))
        assert torch.equal(mlp(x), public.eval().layers(x))


def test_safetensors_copy_gives_identical_weights(tiny_models):
    pth = load_state_dict_file(tiny_models.aesthetic)
    st = load_state_dict_file(tiny_models.aesthetic.with_suffix(".safetensors"))
    assert pth.keys() == st.keys() and all(torch.equal(pth[k], st[k]) for k in pth)


def test_backend_scores_are_mlp_of_normalised_clip_embedding(tiny_models, images):
    import open_clip

    backend = make(str(tiny_models.aesthetic), clip_model=str(tiny_models.open_clip))
    backend.load()
    backend.update(images[:3])
    backend.update(images[3:])
    result = backend.compute()

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.open_clip}")
    with torch.no_grad():
        emb = model.eval().encode_image(torch.stack([preprocess(img.image) for img in images]))
    emb = emb / emb.norm(dim=-1, keepdim=True)
    expected = linear_chain(load_state_dict_file(tiny_models.aesthetic), emb).squeeze(-1)
    assert result.per_image == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.value == pytest.approx(float(expected.mean()), abs=1e-5)
    assert result.stand_in

    st_backend = make(str(tiny_models.aesthetic.with_suffix(".safetensors")), clip_model=str(tiny_models.open_clip))
    st_backend.load()
    st_backend.update(images)
    assert st_backend.compute().per_image == pytest.approx(result.per_image, abs=1e-6)


class NotWeights:
    pass


def test_bad_models_fail_with_one_line_naming_the_field(tiny_models, tmp_path, images):
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: model path not found"):
        make(str(tmp_path / "missing.pth"), clip_model=str(tiny_models.open_clip))
    offline = make(None, clip_model=str(tiny_models.open_clip))  # default: a file in a hub repo; no network here
    assert offline.model_id.endswith("sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot download"):
        offline.load()

    torch.save(PublicMLP(768).state_dict(), tmp_path / "public.pth")
    wrong_dim = make(str(tmp_path / "public.pth"), clip_model=str(tiny_models.open_clip))
    with pytest.raises(LoratuneError, match=r"aesthetics\.clip_model: .* gives 32-d embeddings .* expects 768-d"):
        wrong_dim.load()

    torch.save({"x": NotWeights()}, tmp_path / "pickle.pth")  # loading it needs arbitrary unpickling: refused
    unsafe = make(str(tmp_path / "pickle.pth"), clip_model=str(tiny_models.open_clip))
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot load .*pickle\.pth"):
        unsafe.load()

    torch.save(collections.OrderedDict(weight=torch.zeros(2)), tmp_path / "other.pth")
    with pytest.raises(LoratuneError, match=r"not a LAION aesthetic MLP state dict"):
        make(str(tmp_path / "other.pth"), clip_model=str(tiny_models.open_clip)).load()


def test_clip_model_is_loaded_once_and_shared_with_clip_i(tiny_models):
    aesthetic = make(str(tiny_models.aesthetic), clip_model=str(tiny_models.open_clip))
    aesthetic.load()
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=8)
    clip_i = create_backend(BackendConfig(name="clip_i", model=str(tiny_models.open_clip)), runtime, "consistency")
    clip_i.load()
    assert clip_i.encoder is aesthetic.encoder
