"""The ``image-reward`` and ``hpsv2`` packages' own scores on loratune's tiny stand-ins: tests/data/preference_reference.json.

tests/test_preference.py checks loratune's backends against this file (and against ``hpsv2`` live where it imports).
Neither package installs beside loratune's pins, and ImageReward's BERT (models/BLIP/med.py) imports names that
transformers dropped in 4.40, so the file is written by hand, in the project venv plus a side folder:

    pip install --no-deps image-reward==1.5 hpsv2x==1.2.0 fairscale==0.4.13 clint==0.5.1 args==0.1.0
    pip install --no-deps --target /tmp/tf439 transformers==4.39.3 tokenizers==0.15.2 huggingface_hub==0.36.0
    PYTHONPATH=src:/tmp/tf439 python tests/preference_reference.py

Both packages build their models for the full-size architectures only (ViT-L BLIP + bert-base-uncased from the hub;
ViT-H-14), so the tiny models are assembled from the packages' own classes and handed to their scoring functions:
``ImageReward.score`` (ImageReward/ImageReward.py) on an ``ImageReward`` whose ``blip`` holds the package's
``VisionTransformer`` and med ``BertModel``; ``hpsv2.img_score.score`` with its model cache (``model_dict``) filled by
the package's ``create_model_and_transforms`` with ``initialize_model``'s arguments and the tiny config.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image

REFERENCE = Path(__file__).parent / "data" / "preference_reference.json"
PROMPTS = ["a red fox in the snow, photo", "portrait of a knight, oil painting", "a bowl of fruit on a table"]


def reference_inputs() -> list[tuple[Image.Image, str]]:
    """Square, tall, wide and small images (the two preprocessings crop and pad differently), each with a prompt."""
    rng = np.random.default_rng(7)
    sizes = [(48, 48), (72, 40), (30, 64), (20, 20)]
    return [
        (Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), PROMPTS[i % len(PROMPTS)])
        for i, (h, w) in enumerate(sizes)
    ]


def imagereward_scores(folder: Path) -> list[float]:
    import torch
    from torch import nn

    # The package's __init__ imports its training script (ReFL: datasets, diffusers' trainers); load only the model.
    spec = importlib.util.find_spec("ImageReward")
    package = types.ModuleType("ImageReward")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["ImageReward"] = package
    from ImageReward.ImageReward import MLP, ImageReward, _transform
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    from loratune.tiny.preference import IR_VISION

    source = inspect.getsource(ImageReward.__init__)
    assert "self.mean = 0.16717362830052426" in source and "self.std = 1.0333394966054072" in source
    model = ImageReward.__new__(ImageReward)
    nn.Module.__init__(model)
    model.device, model.mean, model.std = "cpu", 0.16717362830052426, 1.0333394966054072
    model.blip = nn.Module()
    model.blip.visual_encoder = VisionTransformer(
        img_size=IR_VISION["image_size"], patch_size=IR_VISION["patch"], embed_dim=IR_VISION["width"],
        depth=IR_VISION["depth"], num_heads=IR_VISION["width"] // 64,
    )
    config = BertConfig.from_json_file(str(folder / "med_config.json"))
    config.encoder_width = IR_VISION["width"]  # as BLIP_Pretrain does
    model.blip.text_encoder = BertModel(config=config, add_pooling_layer=False)
    tokenizer = BertTokenizer.from_pretrained(str(folder))  # BLIP's init_tokenizer, on the tiny vocabulary
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    model.blip.tokenizer = tokenizer
    model.preprocess = _transform(IR_VISION["image_size"])
    model.mlp = MLP(config.hidden_size)
    missing, unexpected = model.load_state_dict(torch.load(folder / "ImageReward.pt", map_location="cpu"), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    model.eval()
    with torch.no_grad():
        return [float(model.score(prompt, image)) for image, prompt in reference_inputs()]


def hps_scores(folder: Path) -> list[float]:
    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms, factory

    from loratune.tiny.preference import HPS_MODEL_CFG, HPS_WEIGHTS

    factory._MODEL_CONFIGS["HPS-tiny"] = HPS_MODEL_CFG
    model, _, preprocess_val = create_model_and_transforms(
        "HPS-tiny", None, precision="amp", device=img_score.device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False,
    )
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    try:
        return [
            float(img_score.score([image], prompt, cp=str(folder / HPS_WEIGHTS))[0])
            for image, prompt in reference_inputs()
        ]
    finally:
        img_score.model_dict.clear()


def main() -> None:
    from loratune.tiny.preference import build_hpsv2, build_imagereward

    with tempfile.TemporaryDirectory() as tmp:
        build_imagereward(Path(tmp) / "imagereward")
        build_hpsv2(Path(tmp) / "hpsv2")
        reference = {
            "image_reward": imagereward_scores(Path(tmp) / "imagereward"),
            "hpsv2": hps_scores(Path(tmp) / "hpsv2"),
        }
    REFERENCE.write_text(json.dumps(reference, indent=2) + "\n")
    print(json.dumps(reference, indent=2))


if __name__ == "__main__":
    main()
