"""Copy risk: how close each generated image comes to a training image.

For every sample, the highest cosine similarity to any training image (and which one) under a copy-detection
embedder: DINOv2 by default, any ``dino`` / ``clip_i`` backend, or an SSCD-style TorchScript model (``sscd``). A
sample at or above ``evaluation.learning.copy_threshold`` is a copy; the epoch's copy rate is the share of copies.
Copy risk is its own measure, never an axis of the composite: the search treats ``copy rate <= max_copy_rate`` as a
constraint (``constraint`` below is Optuna's convention: feasible when <= 0).

>>> import torch
>>> sims, nearest = nearest_training(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
>>> [round(s, 2) for s in sims], nearest
([1.0, 0.8], [1, 0])
>>> copy_rate([1.0, 0.8], 0.9)
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def nearest_training(samples: torch.Tensor, training: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per sample row, the highest cosine to a training row and that row's index (rows L2-normalised)."""
    best = (samples.float() @ training.float().T).max(dim=1)
    return best.values.tolist(), best.indices.tolist()


def copy_rate(similarities: Sequence[float], threshold: float) -> float | None:
    """The share of samples whose nearest training image is at least ``threshold`` similar; None for no samples."""
    return sum(s >= threshold for s in similarities) / len(similarities) if similarities else None


@dataclass
class CopyRisk:
    """An epoch's copy risk: per sample, the nearest training image and its similarity."""

    similarities: list[float]
    nearest: list[Path]
    threshold: float
    max_rate: float
    embedder: str
    stand_in: bool = False
    samples: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return copy_rate(self.similarities, self.threshold)

    @property
    def constraint(self) -> float | None:
        """``rate - max_rate``: the epoch is feasible when this is <= 0 (Optuna's constraint convention). None on a
        stand-in (random-weight) embedder: its similarities mean nothing and must not veto a LoRA."""
        return None if self.rate is None or self.stand_in else self.rate - self.max_rate

    def to_json(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "stand_in_weights": self.stand_in,
            "threshold": self.threshold,
            "max_rate": self.max_rate,
            "rate": self.rate,
            "constraint": self.constraint,
            "max_similarity": max(self.similarities, default=None),
            "per_image": [{"file": str(s), "similarity": sim, "nearest_training": str(n)}
                          for s, sim, n in zip(self.samples, self.similarities, self.nearest)],
        }


class SscdEmbedder:
    """An SSCD-style copy-detection model from a TorchScript file: images resized to ``size`` squared, ImageNet
    normalisation, descriptors L2-normalised (Pizzi et al. 2022, the released ``sscd_disc_*.torchscript.pt``)."""

    stand_in = False

    def __init__(self, path: str, size: int, runtime: Any) -> None:
        from loratune.modelref import check_model_ref

        self.path = check_model_ref(path, "evaluation.learning.copy_embedder.model")
        self.size = size
        self.runtime = runtime
        self.model: Any = None

    @property
    def label(self) -> str:
        return f"sscd ({Path(self.path).name})"

    def load(self) -> None:
        import torch

        from loratune.errors import LoratuneError, first_line

        try:
            self.model = torch.jit.load(self.path, map_location=self.runtime.device).eval()
        except (RuntimeError, ValueError, OSError) as err:
            raise LoratuneError(f"evaluation.learning.copy_embedder.model: {self.path} is not a TorchScript "
                                f"model ({first_line(err)})") from None

    def embed(self, images: Sequence[Any]) -> torch.Tensor:
        import numpy as np
        import torch

        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        rows = []
        for start in range(0, len(images), self.runtime.batch_size):
            batch = [np.asarray(img.convert("RGB").resize((self.size, self.size)), dtype=np.float32) / 255.0
                     for img in images[start : start + self.runtime.batch_size]]
            pixels = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) - mean) / std
            with torch.no_grad():
                rows.append(self.model(pixels.to(self.runtime.device)).float().cpu())
        features = torch.cat(rows)
        return features / torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-12)


class BackendEmbedder:
    """A ``dino`` / ``clip_i`` consistency backend used only for its image embeddings."""

    def __init__(self, config: Any, runtime: Any, field_path: str) -> None:
        from loratune.metrics.registry import backend_class, get_spec

        self.backend = backend_class(get_spec(config.name, field_path))(config, runtime, field_path=field_path)

    @property
    def stand_in(self) -> bool:
        return bool(self.backend.stand_in)

    @property
    def label(self) -> str:
        return f"{self.backend.spec.name} ({self.backend.describe().get('model') or self.backend.model_id})"

    def load(self) -> None:
        self.backend.load()

    def embed(self, images: Sequence[Any]) -> torch.Tensor:
        return self.backend.embed(list(images))  # type: ignore[attr-defined]


def build_embedder(config: Any, runtime: Any, field_path: str) -> SscdEmbedder | BackendEmbedder:
    """The embedder an ``evaluation.learning.*_embedder`` entry names, built (names and paths checked), not loaded."""
    if getattr(config, "name", None) == "sscd":
        return SscdEmbedder(config.model, config.size, runtime)
    return BackendEmbedder(config, runtime, field_path)
