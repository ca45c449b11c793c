"""Tiny human-preference scorers in their public release layouts, with random weights.

``imagereward/`` mirrors the ``THUDM/ImageReward`` hub repo: ``ImageReward.pt`` (a plain state dict of tensors, keys
``blip.visual_encoder.*`` for BLIP's ViT, ``blip.text_encoder.*`` for its BERT with cross-attention, ``mlp.layers.*``
for the reward head) and ``med_config.json``; beside them a small lower-case WordPiece ``vocab.txt`` stands in for
``bert-base-uncased``.

``hpsv2/`` is an open_clip folder (``open_clip_config.json``) whose weights file holds ``{"state_dict": ...}``, the
layout of ``xswu/HPSv2``'s ``HPS_v2.1_compressed.pt``.

Values are drawn from one seeded generator over the sorted keys (not from a library's initialiser), so the stand-ins,
and the package scores recorded for them in tests/data, stay the same across library releases.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from loratune.tiny.aesthetic import aesthetic_state_dict

# ViT: 2 blocks at width 128 (BLIP's 64-wide heads: 2), 32-px images in 16-px patches.
IR_VISION = {"width": 128, "depth": 2, "patch": 16, "image_size": 32}
IR_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

HPS_MODEL_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
HPS_WEIGHTS = "open_clip_pytorch_model.pth"  # open_clip finds it in the folder; torch.load(weights_only=True) reads it


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Transformer-like random values: norms near 1, everything else small."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        noise = torch.randn(shapes[key], generator=generator)
        is_norm = any(part in key for part in ("norm", "LayerNorm", "ln_")) and key.endswith("weight")
        state[key] = 1.0 + 0.1 * noise if is_norm else 0.05 * noise
    return state


def _vocab() -> list[str]:
    """Whole words for the tiny dataset's prompts would do; letters and ``##``-letters spell any lower-case word."""
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    return _SPECIAL + pieces + [f"##{c}" for c in string.ascii_lowercase + string.digits]


def imagereward_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The tiny ImageReward's BLIP keys and shapes, named as in the package's ``ImageReward.pt``."""
    w, p, n = IR_VISION["width"], IR_VISION["patch"], (IR_VISION["image_size"] // IR_VISION["patch"]) ** 2
    h, inter = IR_TEXT["hidden_size"], IR_TEXT["intermediate_size"]
    vis = "blip.visual_encoder."
    shapes: dict[str, tuple[int, ...]] = {
        f"{vis}cls_token": (1, 1, w),
        f"{vis}pos_embed": (1, n + 1, w),
        f"{vis}patch_embed.proj.weight": (w, 3, p, p),
        f"{vis}patch_embed.proj.bias": (w,),
        f"{vis}norm.weight": (w,),
        f"{vis}norm.bias": (w,),
    }
    for i in range(IR_VISION["depth"]):
        block = f"{vis}blocks.{i}."
        for name, out_in in {"attn.qkv": (3 * w, w), "attn.proj": (w, w), "mlp.fc1": (4 * w, w), "mlp.fc2": (w, 4 * w)}.items():
            shapes[f"{block}{name}.weight"], shapes[f"{block}{name}.bias"] = out_in, (out_in[0],)
        for norm in ("norm1", "norm2"):
            shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (w,)
    txt = "blip.text_encoder."
    shapes[f"{txt}embeddings.word_embeddings.weight"] = (vocab_size, h)
    shapes[f"{txt}embeddings.position_embeddings.weight"] = (40, h)
    shapes[f"{txt}embeddings.LayerNorm.weight"] = shapes[f"{txt}embeddings.LayerNorm.bias"] = (h,)
    for i in range(IR_TEXT["num_hidden_layers"]):
        layer = f"{txt}encoder.layer.{i}."
        linears = {"intermediate.dense": (inter, h), "output.dense": (h, inter)}
        for att, kv_in in (("attention", h), ("crossattention", w)):
            linears.update({f"{att}.self.query": (h, h), f"{att}.self.key": (h, kv_in), f"{att}.self.value": (h, kv_in)})
            linears[f"{att}.output.dense"] = (h, h)
            shapes[f"{layer}{att}.output.LayerNorm.weight"] = shapes[f"{layer}{att}.output.LayerNorm.bias"] = (h,)
        for name, out_in in linears.items():
            shapes[f"{layer}{name}.weight"], shapes[f"{layer}{name}.bias"] = out_in, (out_in[0],)
        shapes[f"{layer}output.LayerNorm.weight"] = shapes[f"{layer}output.LayerNorm.bias"] = (h,)
    return shapes


def build_imagereward(folder: Path, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    vocab_size = len(vocab) + 2  # BLIP adds [DEC] and [ENC] to the tokenizer (med_config's 30524 = 30522 + 2)
    med_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 40,
        "model_type": "bert",
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": IR_VISION["width"],
        "add_cross_attention": True,
        **IR_TEXT,
    }
    (folder / "med_config.json").write_text(json.dumps(med_config, indent=2) + "\n")
    state = random_state_dict(imagereward_shapes(vocab_size), seed)
    # The head at 3x the LAION predictor's initial scale spreads the rewards (the head is linear: 3^5 wider), so a
    # cross-check against the package at 1e-4 tells images apart.
    state.update({f"mlp.{k}": 3 * v for k, v in aesthetic_state_dict(IR_TEXT["hidden_size"], seed).items()})
    torch.save(state, str(folder / "ImageReward.pt"))


def build_hpsv2(folder: Path, seed: int = 0) -> None:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    shapes = {
        k: tuple(v.shape)
        for k, v in open_clip.CLIP(
            embed_dim=HPS_MODEL_CFG["embed_dim"],
            vision_cfg=HPS_MODEL_CFG["vision_cfg"],
            text_cfg=HPS_MODEL_CFG["text_cfg"],
        ).state_dict().items()
    }
    state = random_state_dict(shapes, seed)
    state["logit_scale"] = torch.tensor(4.6052)  # log(100), as trained CLIPs end up; the HPS score does not use it
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": HPS_MODEL_CFG}, indent=2) + "\n")
    torch.save({"state_dict": state}, str(folder / HPS_WEIGHTS))
