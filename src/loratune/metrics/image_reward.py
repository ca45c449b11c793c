"""ImageReward (Xu et al. 2023): a BLIP image-text encoder + MLP head trained on human preference rankings.

The ``image-reward`` package pins timm 0.6 and fairscale, and its BERT (``models/BLIP/med.py``) does not import
with transformers 4.40 or later, so the network runs here on transformers' own BLIP port (``BlipVisionModel`` for
BLIP's ViT, ``BlipTextModel`` for med.py's BERT with cross-attention; module for module the same maths), loaded from
the package's checkpoint layout. The score is the package's ``ImageReward.score`` / ``inference_rank``
(ImageReward/ImageReward.py): the text encoder's [CLS] state attending to the image, through the MLP, then
standardised with the package's constants. tests/test_preference.py checks it against scores the package computed.

``model`` is the ``THUDM/ImageReward`` hub repo or a local folder with ``ImageReward.pt`` (read with
``torch.load(weights_only=True)``) or ``ImageReward.safetensors``, and ``med_config.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.aesthetic import AestheticMLP, load_state_dict_file
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.cache import cached_model
from loratune.metrics.openclip_models import first_line
from loratune.modelref import check_model_ref, is_stand_in

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.__init__: the reward's standardisation
MAX_LENGTH = 35  # ImageReward.score: tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
WEIGHT_FILES = ("ImageReward.safetensors", "ImageReward.pt")
_VISION_RENAMES = [  # BLIP's ViT (models/BLIP/vit.py) -> transformers' BlipVisionModel
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm(\d)\.", r"encoder.layers.\1.layer_norm\2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def vision_state_dict(blip_vit: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP ViT keys renamed for ``BlipVisionModel`` (the renames of transformers' BLIP conversion script)."""
    out = {}
    for key, value in blip_vit.items():
        for pattern, repl in _VISION_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


class ImageRewardModel:
    """BLIP vision + text encoders, the reward MLP and the tokenizer, as the package's ``ImageReward`` holds them."""

    def __init__(self, state: dict[str, torch.Tensor], med_config: dict[str, Any], tokenizer: Any) -> None:
        from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        vit = vision_state_dict(_part(state, "blip.visual_encoder."))
        width = int(vit["embeddings.class_embedding"].shape[-1])
        patch = int(vit["embeddings.patch_embedding.weight"].shape[-1])
        grid = round((vit["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
        depth = len({k.split(".")[2] for k in vit if k.startswith("encoder.layers.")})
        vision_config = BlipVisionConfig(
            hidden_size=width,
            intermediate_size=int(vit["encoder.layers.0.mlp.fc1.weight"].shape[0]),
            num_hidden_layers=depth,
            num_attention_heads=width // 64,  # BLIP's ViTs (base 768/12, large 1024/16) use 64-wide heads
            image_size=grid * patch,
            patch_size=patch,
            layer_norm_eps=1e-6,  # vit.py: partial(nn.LayerNorm, eps=1e-6)
        )
        self.vision = BlipVisionModel(vision_config).eval()
        self.vision.load_state_dict(vit, strict=True)
        text_config = BlipTextConfig(
            vocab_size=med_config["vocab_size"],
            hidden_size=med_config["hidden_size"],
            encoder_hidden_size=width,  # BLIP_Pretrain sets encoder_width to the ViT's width, whatever the file says
            intermediate_size=med_config["intermediate_size"],
            num_hidden_layers=med_config["num_hidden_layers"],
            num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            hidden_act=med_config.get("hidden_act", "gelu"),
            layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
            pad_token_id=med_config.get("pad_token_id", 0),
            bos_token_id=None,  # unused by an encoder; BlipTextConfig's default (30522) is outside a small vocabulary
            is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally (is_decoder=False)
        )
        self.text = BlipTextModel(text_config, add_pooling_layer=False).eval()
        text_state = {k: v for k, v in _part(state, "blip.text_encoder.").items() if not k.endswith("position_ids")}
        self.text.load_state_dict(text_state, strict=True)
        self.mlp = AestheticMLP.from_state_dict(_part(state, "mlp."))  # the package's MLP: the LAION predictor's layout
        self.tokenizer = tokenizer
        self.image_size = grid * patch

    def to(self, device: Any, dtype: Any) -> ImageRewardModel:
        self.vision.to(device, dtype or torch.float32)
        self.text.to(device, dtype or torch.float32)
        self.mlp.to(device)
        return self

    def transform(self) -> Any:
        """ImageReward._transform: bicubic resize of the short side, centre crop, CLIP's normalisation."""
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

        return Compose([
            Resize(self.image_size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(self.image_size),
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ])

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        device, dtype = pixels.device, self.vision.dtype
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            image_embeds = self.vision(pixel_values=pixels.to(dtype)).last_hidden_state
            out = self.text(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device),
                is_decoder=False,
            )
            rewards = self.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return ((rewards - MEAN) / STD).cpu()


def _fetch(ref: str, names: tuple[str, ...], field: str) -> str:
    """The first of ``names`` in the local folder, else downloaded from the hub repo ``ref``."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
        raise LoratuneError(f"{field}: {ref} holds none of {', '.join(names)}")
    from huggingface_hub import hf_hub_download

    err: Exception | None = None
    for name in names:
        try:
            return hf_hub_download(repo_id=ref, filename=name)
        except Exception as exc:  # noqa: BLE001  (missing file, no network: try the next name, then report)
            err = exc
    raise LoratuneError(f"{field}: cannot download {' or '.join(names)} from {ref}: {first_line(err)}") from None


def _load_tokenizer(ref: str, field: str) -> Any:
    """BLIP's ``init_tokenizer``: a BERT tokenizer plus the [DEC] and [ENC] tokens."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(ref)
    except Exception as err:  # noqa: BLE001  (any load failure is the user's folder or network)
        raise LoratuneError(f"{field}: cannot load BERT tokenizer {ref}: {first_line(err)}") from None
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardScore(Backend):
    """Mean ImageReward over the prompted images (a standardised reward: 0 is ImageReward's average, higher better)."""

    class Options(Backend.Options):
        tokenizer: str | None = Field(
            None, description="BERT tokenizer (hub id or folder); default: the model folder's, else bert-base-uncased"
        )

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_field = f"{self.field_path}.model"
        self.model_id = check_model_ref(self.model_id or "", self.model_field)
        local = Path(self.model_id)
        if self.options.tokenizer is not None:
            self.tokenizer_ref = check_model_ref(self.options.tokenizer, f"{self.field_path}.tokenizer")
        else:
            self.tokenizer_ref = str(local) if (local / "vocab.txt").is_file() else "bert-base-uncased"
        self.stand_in = is_stand_in(self.model_id)
        self.reset()

    def load(self) -> None:
        rt, ref, field = self.runtime, self.model_id or "", self.model_field

        def loader() -> ImageRewardModel:
            weights = _fetch(ref, WEIGHT_FILES, field)
            med_config = json.loads(Path(_fetch(ref, ("med_config.json",), field)).read_text())
            tokenizer = _load_tokenizer(self.tokenizer_ref, f"{self.field_path}.tokenizer")
            try:
                model = ImageRewardModel(load_state_dict_file(weights), med_config, tokenizer)
            except Exception as err:  # noqa: BLE001  (a pickle that is not plain tensors, missing or odd keys)
                raise LoratuneError(f"{field}: cannot load ImageReward from {weights}: {first_line(err)}") from None
            return model.to(rt.device, rt.dtype)

        key = ("image_reward", ref, self.tokenizer_ref, str(rt.device), str(rt.dtype))
        self.model = cached_model(key, loader)
        self.preprocess = self.model.transform()

    def reset(self) -> None:
        self._scores: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        scored = [img for img in batch if img.prompt]
        values: dict[int, float] = {}
        if scored:
            pixels = torch.stack([self.preprocess(img.image.convert("RGB")) for img in scored])
            rewards = self.model.score(pixels.to(self.runtime.device), [img.prompt for img in scored])  # type: ignore[misc]
            values = {id(img): float(r) for img, r in zip(scored, rewards)}
        self._scores.extend(values.get(id(img)) for img in batch)

    def compute(self) -> AxisResult:
        return self.prompted_mean(self._scores)
