"""A tiny WD14-style tagger: ``model.onnx`` (NHWC 448-px BGR input, one sigmoid per tag) and ``selected_tags.csv``
laid out like SmilingWolf/wd-*-tagger-v3, with a few real Danbooru tags in each category (rating 9, general 0,
character 4).

    onnxruntime.InferenceSession(folder / "model.onnx")   # input (batch, 448, 448, 3) -> (batch, len(tags))
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

IMAGE_SIZE = 448
TAGS: tuple[tuple[str, int], ...] = (
    *((name, 9) for name in ("general", "sensitive", "questionable", "explicit")),
    *((name, 0) for name in (
        "1boy", "solo", "smile", "open_mouth", "standing", "sitting", "full_body", "upper_body", "looking_at_viewer",
        "outdoors", "beach", "ocean", "sky", "night", "night_sky", "grass", "field", "town", "shirt", "t-shirt",
        "shorts", "brown_hair", "curly_hair", "black_hair", "spiky_hair", "short_hair", "brown_eyes", "^_^",
    )),
    *((name, 4) for name in ("luca_paguro", "alberto_scorfano")),
)


class _Tagger(torch.nn.Module):
    """NHWC pixels (0-255) -> per-tag sigmoid, through a strided conv and global pooling."""

    def __init__(self, n_tags: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=16, stride=16)
        self.head = torch.nn.Linear(8, n_tags)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv(pixels.permute(0, 3, 1, 2) / 255.0)
        return torch.sigmoid(self.head(torch.relu(x).mean(dim=(2, 3)) * 4.0))


def build_tagger(folder: Path, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _Tagger(len(TAGS)).eval()
    torch.onnx.export(model, (torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, 3),), str(folder / "model.onnx"),
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"},
                                                                                    "output": {0: "batch"}},
                      dynamo=False)
    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category) in enumerate(TAGS):
            writer.writerow([index, name, category, 1000 - index])
