"""A tiny ArcFace-style face recogniser exported to ONNX the way insightface's packs ship them.

insightface routes an ONNX file by its input shape: a square input of at least 112 px (multiple of 16) with one output
is an ``ArcFaceONNX``. Like ``w600k_r50.onnx`` the input is ``input.1`` with a dynamic batch axis, NCHW 3×112×112,
and the output a 512-d embedding. Load it with ``insightface.model_zoo.get_model(path)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INPUT_SIZE = 112
EMBED_DIM = 512


class TinyArcFace(nn.Module):
    """Strided convolutions → global pool → BatchNorm'd 512-d embedding (the shape of ArcFace's head)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.PReLU(8),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.PReLU(16),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.PReLU(32),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, EMBED_DIM)
        self.features = nn.BatchNorm1d(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.body(x)))


def build_arcface(onnx_path: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = TinyArcFace().eval()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    # The TorchScript exporter (dynamo=False) gives the plain single-file graph insightface's own models have.
    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}},
        opset_version=17,
        dynamo=False,
    )
