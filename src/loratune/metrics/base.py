"""What a metric backend is: a torchmetrics-style accumulate/compute object over decoded images.

The evaluation pipeline decodes every image once into an ``EvalImage``, hands references to ``setup`` once, feeds
batches to ``update`` and reads one ``AxisResult`` from ``compute``. Backends load their models through
``loratune.metrics.cache`` so each model is loaded once per process and shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from loratune.errors import LoratuneError
from loratune.metrics.composite import normalise

STAND_IN_WARNING = "ran on stand-in (randomly initialised) weights: its scores mean nothing"

if TYPE_CHECKING:
    from PIL import Image

    from loratune.metrics.config import BackendConfig
    from loratune.metrics.embedding_cache import EmbeddingCache
    from loratune.metrics.registry import BackendSpec


@dataclass
class EvalImage:
    """One decoded generated image and what it was generated from."""

    path: Path
    image: Image.Image  # RGB, decoded once by the pipeline
    prompt: str | None = None
    seed: int | None = None
    character: str | None = None

    @property
    def group(self) -> str:
        """Images that share a prompt (and character) form one diversity group."""
        return f"{self.character or ''}\x1f{self.prompt or ''}"


@dataclass
class References:
    """Reference images per character (``None`` = references not tied to a character) and character traits."""

    images: dict[str | None, list[Image.Image]] = field(default_factory=dict)
    paths: dict[str | None, list[Path]] = field(default_factory=dict)
    traits: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # Images known not to show a character: the base model's own samples of its prompts (``None``: of prompts naming
    # no character). With them, identity backends learn a "character present" threshold (``identity_rate``).
    negatives: dict[str | None, list[Image.Image]] = field(default_factory=dict)
    negative_paths: dict[str | None, list[Path]] = field(default_factory=dict)

    def for_character(self, character: str | None) -> list[Image.Image]:
        """The character's references, else the untied ones, else all of them."""
        if character in self.images:
            return self.images[character]
        if None in self.images:
            return self.images[None]
        return [img for imgs in self.images.values() for img in imgs]

    def negatives_for(self, character: str | None) -> list[Image.Image]:
        """What is not ``character``: the base model's samples of its prompts and of prompts naming no character,
        and every other character's references. Empty when no base samples were given (no threshold is learned)."""
        if not any(self.negatives.values()):
            return []
        if character is None:
            return [img for imgs in self.negatives.values() for img in imgs]
        others = [img for name, imgs in self.images.items() if name not in (None, character) for img in imgs]
        return self.negatives.get(character, []) + self.negatives.get(None, []) + others

    def __bool__(self) -> bool:
        return any(self.images.values())


@dataclass
class Runtime:
    """Where and how backends run; shared by all backends of one evaluation."""

    device: Any = "cpu"  # torch.device
    dtype: Any = None  # torch.dtype
    batch_size: int = 8
    trust_remote_code: bool = False
    embeddings: EmbeddingCache | None = None  # shared image embeddings while an Evaluator.score runs


@dataclass
class AxisResult:
    """A backend's result: the aggregate on its natural scale, per-image values and whatever else it measured.

    ``value is None`` means the axis could not be computed; ``missing_reason`` says why. It is never reported as 0.
    """

    backend: str
    value: float | None
    per_image: list[float | None] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    missing_reason: str | None = None
    stand_in: bool = False
    model_id: str | None = None


@dataclass(frozen=True)
class Normalisation:
    """How an axis's raw number becomes [0, 1]: the range of the backend that produced the number."""

    backend: str
    lo: float
    hi: float
    higher_is_better: bool
    from_config: bool  # the range is the config's ``norm_range``, not the registry's
    kind: str = "linear"  # "share": the value is already a share of images in [0, 1] (an identity rate)

    def apply(self, value: float | None) -> float | None:
        return normalise(value, self.lo, self.hi, self.higher_is_better)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "kind": self.kind,
            "range": [self.lo, self.hi],
            "higher_is_better": self.higher_is_better,
            "range_from": "config norm_range" if self.from_config else ("share of images" if self.kind == "share"
                                                                        else "registry"),
        }


class Backend:
    """Base class of every metric backend. Subclasses set ``Options`` and implement ``load``/``update``/``compute``."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    spec: ClassVar[BackendSpec]

    def __init__(self, config: BackendConfig, runtime: Runtime, field_path: str = "evaluation.backends") -> None:
        self.config = config
        self.runtime = runtime
        self.field_path = field_path
        try:
            self.options = self.Options.model_validate(config.options())
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise LoratuneError(
                f"{field_path}.{loc}: {first['msg']} (backend {config.name!r})"
                + (f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else "")
            ) from None
        self.model_id: str | None = config.model or self.spec.default_model
        self.stand_in = False

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load models (through the process-wide cache). Called once before ``setup``."""

    def setup(self, references: References) -> None:
        """Receive reference images and traits once per evaluation (e.g. to embed the references)."""

    def reset(self) -> None:
        """Forget accumulated state so the loaded backend can score another image set."""

    def update(self, batch: list[EvalImage]) -> None:
        raise NotImplementedError

    def compute(self) -> AxisResult:
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------------------------------
    def result(self, value: float | None, **kwargs: Any) -> AxisResult:
        return AxisResult(backend=self.spec.name, value=value, stand_in=self.stand_in, model_id=self.model_id, **kwargs)

    def missing(self, reason: str, **kwargs: Any) -> AxisResult:
        return self.result(None, missing_reason=reason, **kwargs)

    def prompted_mean(self, scores: list[float | None]) -> AxisResult:
        """The mean over the images that had a prompt (a prompt-conditioned score: CLIPScore, HPSv2, ImageReward);
        missing when none had one."""
        present = [s for s in scores if s is not None]
        if not present:
            return self.missing("no image has a prompt", per_image=list(scores))
        details: dict[str, Any] = {"images_scored": len(present), "min": min(present), "max": max(present)}
        if len(scores) > len(present):
            details["images_without_prompt"] = len(scores) - len(present)
        return self.result(sum(present) / len(present), per_image=list(scores), details=details)

    def normalisation(self) -> Normalisation:
        """The range this backend's own numbers are normalised with: the config's ``norm_range``, else the registry's."""
        lo, hi = self.config.norm_range or self.spec.norm_range
        return Normalisation(self.spec.name, lo, hi, self.spec.higher_is_better, self.config.norm_range is not None)

    def producer(self) -> Backend:
        """The backend whose numbers ``compute`` returns (a face backend hands over to its fallback)."""
        return self

    def describe(self) -> dict[str, Any]:
        """What goes into scores.json about this backend."""
        spec = self.spec
        return {
            "name": spec.name,
            "axis": spec.axis,
            "model": self.model_id,
            "options": self.options.model_dump(mode="json"),
            "stand_in_weights": self.stand_in,
            "licence": spec.licence,
            "score_range": list(spec.score_range),
            "higher_is_better": spec.higher_is_better,
            "normalisation": self.normalisation().describe(),
        }
