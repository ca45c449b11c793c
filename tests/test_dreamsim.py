"""DreamSim identity on a stand-in checkpoint folder (random ViT-B/32, DreamSim's layout), checked against DreamSim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.registry import create_backend
from loratune.modelref import write_stand_in_marker

RUNTIME = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)


@pytest.fixture(scope="module")
def dreamsim_folder(tmp_path_factory) -> Path:
    """What dreamsim's open_clip_vitb32 zip unpacks to, with random weights (shapes from a meta-device ViT-B/32)."""
    folder = tmp_path_factory.mktemp("dreamsim")
    # dreamsim's vit_base(patch_size=32) layout (its load_state_dict is strict, so a wrong shape fails loudly).
    shapes = {
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 50, 768),
        "patch_embed.proj.weight": (768, 3, 32, 32),
        "patch_embed.proj.bias": (768,),
        "norm.weight": (768,),
        "norm.bias": (768,),
    }
    for i in range(12):
        block = {
            "norm1.weight": (768,),
            "norm1.bias": (768,),
            "attn.qkv.weight": (2304, 768),
            "attn.qkv.bias": (2304,),
            "attn.proj.weight": (768, 768),
            "attn.proj.bias": (768,),
            "norm2.weight": (768,),
            "norm2.bias": (768,),
            "mlp.fc1.weight": (3072, 768),
            "mlp.fc1.bias": (3072,),
            "mlp.fc2.weight": (768, 3072),
            "mlp.fc2.bias": (768,),
        }
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if "norm" in key:
            state[key] = torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
        elif key.endswith("bias"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = (torch.randn(shape, generator=gen) * 0.02).half()  # half: a smaller file; loads into fp32
    state["pos_drop.weight"], state["pos_drop.bias"] = torch.ones(768), torch.zeros(768)  # CLIP's ln_pre
    state["proj"] = torch.randn(768, 512, generator=gen) * 0.02
    torch.save({"state_dict": state}, folder / "open_clip_vitb32_pretrain.pth.tar")
    (folder / "open_clip_vitb32_single_lora").mkdir()
    lora = {"r": 4, "lora_alpha": 4, "lora_dropout": 0.0, "bias": "none", "target_modules": ["qkv"]}
    (folder / "open_clip_vitb32_single_lora" / "adapter_config.json").write_text(json.dumps(lora))
    write_stand_in_marker(folder, "random ViT-B/32 in DreamSim's checkpoint layout")
    return folder


def test_dreamsim_similarity_is_one_minus_dreamsim_distance(dreamsim_folder: Path) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    config = BackendConfig(
        name="dreamsim", model=str(dreamsim_folder), dreamsim_type="open_clip_vitb32", pretrained=False
    )
    backend = create_backend(config, RUNTIME, "consistency")
    backend.load()
    backend.setup(References(images={None: [images[0]]}))
    backend.update([EvalImage(Path(f"{i}.png"), img) for i, img in enumerate(images[1:])])
    result = backend.compute()

    # DreamSim's own distance (its forward: 1 - cosine of its embeddings) on the model loaded through dreamsim().
    model, preprocess = backend.encoder.model, backend.encoder.preprocess
    with torch.no_grad():
        distances = [float(model(preprocess(img), preprocess(images[0]))) for img in images[1:]]
    assert result.per_image == pytest.approx([1 - d for d in distances], abs=1e-4)
    assert result.stand_in

    missing = BackendConfig(name="dreamsim", model=str(dreamsim_folder / "nothing"), dreamsim_type="clip_vitb32")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.model: cannot load DreamSim"):
        create_backend(missing, RUNTIME, "consistency").load()
