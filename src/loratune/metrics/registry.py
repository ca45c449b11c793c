"""The declarative table of metric backends (pyiqa-style): what each one is, and ``create_backend`` to build it.

Adding a metric = one ``BackendSpec`` entry here + one ``Backend`` subclass in its own module. Classes are imported
lazily by dotted path so reading the table never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loratune.errors import LoratuneError

if TYPE_CHECKING:
    from loratune.metrics.base import Backend, Runtime
    from loratune.metrics.config import BackendConfig

AXES = ("alignment", "consistency", "aesthetics", "quality", "diversity")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    axis: str
    target: str  # "module:Class", imported on use
    score_range: tuple[float, float]  # the natural range of the raw score
    higher_is_better: bool
    norm_range: tuple[float, float]  # raw values mapped linearly onto [0, 1] (clipped); overridable per config
    needs_prompts: bool
    needs_references: bool
    licence: str
    default_model: str | None
    description: str


_SPECS = [
    # --- prompt alignment -----------------------------------------------------------------------------------------
    BackendSpec(
        "vqascore", "alignment", "loratune.metrics.vqascore:VqaScore", (0.0, 1.0), True, (0.0, 1.0),
        True, False, "MIT (InternVL3 code and weights; its Qwen2.5 LLM part: Apache-2.0) / model's own",
        "OpenGVLab/InternVL3-1B-hf",
        "VQAScore: P('Yes') from a vision-language model asked 'Does this figure show \"{prompt}\"?' "
        "(Yes/No-pair softmax; native transformers VLMs or remote-code InternVL2)",
    ),
    BackendSpec(
        "clipscore", "alignment", "loratune.metrics.clipscore:OpenClipScore", (0.0, 100.0), True, (15.0, 40.0),
        True, False, "MIT (OpenAI CLIP weights) / model's own for other open_clip weights", "ViT-L-14",
        "CLIPScore = 100·max(cos(image, text), 0) with any open_clip model (incl. EVA02-CLIP) or local checkpoint",
    ),
    BackendSpec(
        "hf_clipscore", "alignment", "loratune.metrics.clipscore:HFClipScore", (0.0, 100.0), True, (15.0, 40.0),
        True, False, "MIT (openai/clip-*) / model's own", "openai/clip-vit-large-patch14",
        "CLIPScore with a Hugging Face transformers CLIPModel",
    ),
    # --- character consistency ------------------------------------------------------------------------------------
    BackendSpec(
        "traits", "consistency", "loratune.metrics.vqascore:VlmTraits", (0.0, 1.0), True, (0.0, 1.0),
        False, False, "MIT (InternVL3 code and weights; its Qwen2.5 LLM part: Apache-2.0) / model's own",
        "OpenGVLab/InternVL3-1B-hf",
        "character traits: mean P('Yes') of the VLM asked 'Does this figure show {trait}?' per image and trait",
    ),
    BackendSpec(
        "clip_i", "consistency", "loratune.metrics.embedding_identity:ClipImageIdentity", (-1.0, 1.0), True, (0.5, 1.0),
        False, False, "MIT (OpenAI CLIP weights) / model's own", "ViT-L-14",
        "CLIP-I: cosine similarity of CLIP image embeddings to the character's references and across generations",
    ),
    BackendSpec(
        "dino", "consistency", "loratune.metrics.embedding_identity:DinoIdentity", (-1.0, 1.0), True, (0.0, 1.0),
        False, False, "Apache-2.0 (DINOv2)", "facebook/dinov2-base",
        "DINO-style: cosine similarity of a self-supervised vision model's embeddings (HF or timm)",
    ),
    BackendSpec(
        "insightface", "consistency", "loratune.metrics.insightface_identity:InsightFaceIdentity", (-1.0, 1.0), True,
        (0.0, 0.8), False, False,
        "MIT (insightface code); its model packs (buffalo_l, antelopev2): non-commercial research use only",
        "buffalo_l",
        "ArcFace face-embedding cosine to the reference-face centroid and across generations; images without a face "
        "left out; falls back to an image-embedding backend below min_detection_rate",
    ),
    BackendSpec(
        "dlib_face", "consistency", "loratune.metrics.dlib_identity:DlibFaceIdentity", (-1.0, 1.0), True,
        (0.8, 1.0), False, False, "Boost Software License (dlib); MIT (face_recognition_models), its dlib models CC0",
        "dlib_face_recognition_resnet_model_v1",
        "dlib ResNet 128-d face-embedding cosine (weights ship in face_recognition_models: real, offline)",
    ),
    BackendSpec(
        "dreamsim", "consistency", "loratune.metrics.dreamsim_identity:DreamSimIdentity", (-1.0, 1.0), True,
        (0.3, 1.0), False, False, "MIT (dreamsim code and LoRA weights); base ViTs: DINO Apache-2.0, CLIP MIT",
        "~/.cache/loratune/dreamsim",
        "DreamSim similarity (1 - distance) to the character's references and across generations",
    ),
    # --- aesthetics -----------------------------------------------------------------------------------------------
    BackendSpec(
        "laion_aesthetic", "aesthetics", "loratune.metrics.aesthetic:LaionAesthetic", (1.0, 10.0), True, (3.0, 8.0),
        False, False, "Apache-2.0 (improved-aesthetic-predictor); MIT (CLIP ViT-L/14)",
        "camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth",
        "LAION Aesthetics Predictor V2: MLP on L2-normalised CLIP ViT-L/14 image embeddings, 1-10",
    ),
    BackendSpec(
        "cafe_aesthetic", "aesthetics", "loratune.metrics.cafe:CafeAesthetic", (0.0, 1.0), True, (0.0, 1.0),
        False, False, "AGPL-3.0 (cafeai/cafe_aesthetic model card)", "cafeai/cafe_aesthetic",
        "cafe_aesthetic: P(label == 'aesthetic') from its image classifier (all labels read, not the top one's score)",
    ),
    BackendSpec(
        name="hpsv2", axis="aesthetics", target="loratune.metrics.hps:HpsV2Score", score_range=(-1.0, 1.0),
        higher_is_better=True, norm_range=(0.2, 0.35), needs_prompts=True, needs_references=False,
        licence="Apache-2.0 (HPSv2 code and xswu/HPSv2 weights); base OpenCLIP ViT-H-14 laion2b: MIT",
        default_model="xswu/HPSv2/HPS_v2.1_compressed.pt",
        description="HPSv2.1 human-preference score: cosine of image and prompt embeddings of the preference-tuned "
        "OpenCLIP ViT-H-14 (the hpsv2 package's score; typically 0.2-0.35)",
    ),
    BackendSpec(
        name="image_reward", axis="aesthetics", target="loratune.metrics.image_reward:ImageRewardScore",
        score_range=(-5.0, 5.0), higher_is_better=True, norm_range=(-1.5, 1.5), needs_prompts=True,
        needs_references=False, licence="Apache-2.0 (image-reward code and THUDM/ImageReward weights; BLIP: BSD-3)",
        default_model="THUDM/ImageReward",
        description="ImageReward: BLIP image-prompt encoding -> MLP, standardised (0 = its training mean; in "
        "principle unbounded, in practice within +-3)",
    ),
    # --- technical quality ----------------------------------------------------------------------------------------
    BackendSpec(
        "musiq", "quality", "loratune.metrics.quality:Musiq", (0.0, 100.0), True, (20.0, 80.0),
        False, False, "PolyForm Noncommercial 1.0.0 + NTU S-Lab 1.0, non-commercial (pyiqa); MUSIQ weights: Apache-2.0",
        "pyiqa:musiq",
        "MUSIQ (KonIQ-10k) through pyiqa; random stand-in weights when the checkpoint cannot be fetched",
    ),
    BackendSpec(
        "pyiqa", "quality", "loratune.metrics.quality:PyiqaQuality", (0.0, 100.0), True, (20.0, 80.0),
        False, False, "PolyForm Noncommercial 1.0.0 + NTU S-Lab 1.0, non-commercial (pyiqa) + the weights' own terms",
        "pyiqa:musiq",
        "any pyiqa no-reference metric (option metric: topiq_nr, clipiqa, ...); range and direction from pyiqa's table",
    ),
    BackendSpec(
        "piqe", "quality", "loratune.metrics.quality:Piqe", (0.0, 100.0), False, (10.0, 80.0),
        False, False, "PolyForm Noncommercial 1.0.0 + NTU S-Lab 1.0, non-commercial (pyiqa's implementation)", None,
        "PIQE (Venkatanath et al. 2015): weight-free blockwise distortion estimate, lower is better; works offline",
    ),
    BackendSpec(
        "noise", "quality", "loratune.metrics.noise:NoiseLevel", (0.0, 255.0), False, (0.0, 5.0),
        False, False, "BSD-3-Clause (scikit-image)", None,
        "noise level: the wavelet (Donoho) estimate of the noise's standard deviation in grey levels, weight-free; "
        "does not penalise flat shading (stylised characters), does not see blur",
    ),
    # --- diversity ------------------------------------------------------------------------------------------------
    BackendSpec(
        "lpips", "diversity", "loratune.metrics.diversity:LpipsDiversity", (0.0, 1.0), True, (0.0, 0.7),
        False, False, "BSD-2-Clause (lpips)", "alex",
        "mean pairwise LPIPS distance among images that share a prompt (different seeds)",
    ),
    BackendSpec(
        "vendi", "diversity", "loratune.metrics.diversity:VendiDiversity", (0.0, 1.0), True, (0.0, 1.0),
        False, False, "MIT (vendi-score); MIT (OpenAI CLIP weights) / model's own", "ViT-L-14",
        "Vendi score of CLIP image embeddings per prompt group, as (VS - 1) / (n - 1): 0 = identical, 1 = all distinct",
    ),
]

BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str, field: str = "evaluation.backends") -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise LoratuneError(f"{field}: unknown backend {name!r} (known: {known})") from None


def backends_for_axis(axis: str) -> list[BackendSpec]:
    return [spec for spec in _SPECS if spec.axis == axis]


def backend_class(spec: BackendSpec) -> type[Backend]:
    module, _, cls = spec.target.partition(":")
    klass: type[Backend] = getattr(importlib.import_module(module), cls)
    klass.spec = spec  # one class per registry entry: the class learns its entry (range, default model) here
    return klass


def create_backend(config: BackendConfig, runtime: Runtime, axis: str | None = None) -> Backend:
    """Build (but do not load) the backend named in ``config``; checks it belongs on ``axis`` when given."""
    field = f"evaluation.backends.{axis}" if axis else "evaluation.backends"
    spec = get_spec(config.name, field)
    if axis is not None and spec.axis != axis:
        others = ", ".join(s.name for s in backends_for_axis(axis))
        raise LoratuneError(f"{field}: backend {config.name!r} scores {spec.axis}, not {axis} (choose: {others})")
    return backend_class(spec)(config, runtime, field_path=field)
