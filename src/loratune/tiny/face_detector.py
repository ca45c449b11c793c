"""A stand-in SCRFD face detector ONNX: finds the procedural characters' faces by their skin tone.

insightface routes an ONNX with nine outputs to ``SCRFD`` (scores, box distances and 5 keypoints for strides 8, 16
and 32, two anchors per location), so ``insightface.model_zoo.get_model(path)`` loads this file like
``det_10g.onnx``. Instead of learned weights it computes, per 16-px cell, the share of skin-tone pixels in the
surrounding 48-px window; a share above one half scores as a face with a fixed 80-px box and ArcFace-template
keypoints around the cell centre (strides 8 and 32 never fire). So the generated dataset's characters and references
are "detected", while noise images from random-weight pipelines are not: enough to exercise detection rates, face
crops and fallbacks end to end. It is no face detector for real photos.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)
ACTIVE_STRIDE = 16
NUM_ANCHORS = 2
BOX_HALF = 48.0  # px: the reported box is 96 px square around the cell centre
SOLID_SKIN = 0.7  # skin share of each cell in the 2x2 block that scores 0.5 (insightface's default threshold)
# ArcFace's 112-px alignment template (insightface.utils.face_align.arcface_dst), centred and scaled to the box.
_ARCFACE_DST = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
# Skin band in raw RGB (both characters' skin tones; no background colour of tiny/dataset.py falls inside).
_R_MINUS_G = (32.0, 64.0)
_G_MINUS_B = (22.0, 50.0)
_R_MIN = 165.0


class SkinFaceDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        offsets = [((x - 56.0) / 56.0 * BOX_HALF, (y - 56.0) / 56.0 * BOX_HALF) for x, y in _ARCFACE_DST]
        self.register_buffer("keypoints", torch.tensor(offsets).flatten(), persistent=False)

    def forward(self, blob: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rgb = blob * 128.0 + 127.5  # undo SCRFD's input normalisation ((x - 127.5) / 128, RGB order)
        r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
        rg, gb = r - g, g - b
        inside = (
            (rg >= _R_MINUS_G[0])
            & (rg <= _R_MINUS_G[1])
            & (gb >= _G_MINUS_B[0])
            & (gb <= _G_MINUS_B[1])
            & (r >= _R_MIN)
        ).float()
        cell = F.avg_pool2d(inside, ACTIVE_STRIDE, ACTIVE_STRIDE)
        # A face is a solid skin patch: every 16-px cell of a 2x3 (rows x columns) block mostly skin (min-pool). Arms and legs are
        # thinner than three cells, so they do not pass; the score grows with how solid the patch is.
        solid = -F.max_pool2d(F.pad(-cell, (1, 1, 0, 1), value=-1.0), (2, 3), 1)
        score16 = ((solid - SOLID_SKIN) * 1.25 + 0.5).clamp(0.0, 1.0)
        scores, boxes, kpss = [], [], []
        for stride in STRIDES:
            h, w = blob.shape[2] // stride, blob.shape[3] // stride
            if stride == ACTIVE_STRIDE:
                score = score16[:, :, :h, :w]
            else:
                score = blob.new_zeros(blob.shape[0], 1, h, w)
            box = blob.new_full((blob.shape[0], 4, h, w), BOX_HALF / stride)
            kps = (self.keypoints / stride).view(1, 10, 1, 1).expand(blob.shape[0], 10, h, w)
            scores.append(_per_anchor(score))
            boxes.append(_per_anchor(box))
            kpss.append(_per_anchor(kps))
        return (*scores, *boxes, *kpss)


def _per_anchor(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W*anchors, C): location-major, each location repeated per anchor, as SCRFD lays it out."""
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h * w, 1, c)
    return x.expand(b, h * w, NUM_ANCHORS, c).reshape(b, h * w * NUM_ANCHORS, c)


def build_face_detector(onnx_path: Path) -> None:
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(
        SkinFaceDetector().eval(),
        (torch.zeros(1, 3, 640, 640),),
        str(onnx_path),
        input_names=["input.1"],
        output_names=names,
        # Like det_10g.onnx: any input size (multiples of 32), chosen by the caller's det_size.
        dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {1: "anchors"} for n in names}},
        opset_version=17,
        dynamo=False,
    )
