"""The LAION Aesthetics Predictor V2 MLP in its public state-dict layout, with random weights.

The public ``sac+logos+ava1-l14-linearMSE.pth`` is ``torch.save(model.state_dict())`` of::

    nn.Sequential(Linear(D, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                  Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))

held as ``self.layers``, so its keys are ``layers.{0,2,4,6,7}.{weight,bias}``. D is 768 for ViT-L/14; the tiny one
uses the tiny open_clip's embedding width. A ``.safetensors`` copy sits beside the ``.pth``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

HIDDEN = (1024, 128, 64, 16, 1)


def aesthetic_state_dict(input_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the public key layout (Linear layers at Sequential indices 0, 2, 4, 6, 7)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    dims = (input_dim, *HIDDEN)
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), itertools.pairwise(dims)):
        bound = 1.0 / fan_in**0.5  # nn.Linear's default initialisation range
        state[f"layers.{index}.weight"] = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        state[f"layers.{index}.bias"] = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
    return state


def build_aesthetic(pth_path: Path, input_dim: int, seed: int = 0) -> None:
    from safetensors.torch import save_file

    pth_path.parent.mkdir(parents=True, exist_ok=True)
    state = aesthetic_state_dict(input_dim, seed)
    torch.save(state, str(pth_path))
    save_file(state, str(pth_path.with_suffix(".safetensors")))
