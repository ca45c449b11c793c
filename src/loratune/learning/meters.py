"""What the ``Evaluator`` measures beside the axes: copy risk against the training images and CMMD against the
held-out images. Both embed their image set once (at ``load``) and then every scored sample set against it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.learning.cmmd import cmmd
from loratune.learning.copy_risk import CopyRisk, build_embedder, nearest_training
from loratune.learning.holdout import training_and_holdout

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.metrics.base import EvalImage, Runtime


class LearningMeters:
    """Copy risk (when the dataset is known and ``copy_embedder`` is set) and CMMD (when images are held out)."""

    def __init__(self, config: Config, runtime: Runtime) -> None:
        learning = config.evaluation.learning
        self.learning = learning
        needed = learning.copy_embedder is not None or (learning.cmmd_embedder is not None and config.dataset.holdout)
        self.training, self.held = training_and_holdout(config) if needed else ([], [])
        self.copy = (build_embedder(learning.copy_embedder, runtime, "evaluation.learning.copy_embedder")
                     if learning.copy_embedder is not None and self.training else None)
        self.clip = (build_embedder(learning.cmmd_embedder, runtime, "evaluation.learning.cmmd_embedder")
                     if learning.cmmd_embedder is not None and self.held else None)
        self._training_rows: Any = None
        self._held_rows: Any = None

    def __bool__(self) -> bool:
        return self.copy is not None or self.clip is not None

    def load(self) -> None:
        from loratune.images import load_image

        if self.copy is not None and self._training_rows is None:
            self.copy.load()
            self._training_rows = self.copy.embed([load_image(p) for p in self.training])
        if self.clip is not None and self._held_rows is None:
            self.clip.load()
            self._held_rows = self.clip.embed([load_image(p) for p in self.held])

    def measure(self, images: list[EvalImage]) -> tuple[CopyRisk | None, dict[str, Any] | None]:
        """The samples' copy risk and their CMMD to the held-out images (None where not measured)."""
        self.load()
        risk = None
        if self.copy is not None and images:
            sims, nearest = nearest_training(self.copy.embed([img.image for img in images]), self._training_rows)
            risk = CopyRisk(sims, [self.training[i] for i in nearest], self.learning.copy_threshold,
                            self.learning.max_copy_rate, self.copy.label, self.copy.stand_in,
                            [Path(img.path) for img in images])
        distance = None
        if self.clip is not None and images:
            rows = self.clip.embed([img.image for img in images])
            distance = {"value": cmmd(rows.numpy(), self._held_rows.numpy()), "embedder": self.clip.label,
                        "held_out_images": len(self.held), "stand_in_weights": self.clip.stand_in}
        return risk, distance
