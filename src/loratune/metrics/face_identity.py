"""Character consistency from face-recognition embeddings: the scoring shared by the face backends, InsightFace's
ArcFace (``loratune.metrics.insightface_identity``) and dlib's shipped 128-d embedder
(``loratune.metrics.dlib_identity``).

Per character: the cosine similarity of each generated face to the centroid of the character's reference faces (the
per-image values and, when references have faces, the axis value), and the mean pairwise similarity among the
character's generated faces ("across generations", the value when no reference face exists). An image in which no
face is found is counted (``details["face_detection_rate"]``) and left out — never scored 0.

Stylised 3D and anime faces often defeat face detectors, so when faces are found in fewer than ``min_detection_rate``
of some character's *reference* images, the ``fallback`` backend (an image-embedding identity backend such as
``clip_i``, built through the registry) scores identity instead. The choice is made once, in ``setup``, from the
references and the config alone: every image set the backend scores afterwards (every epoch of a study) is on the
fallback's scale, normalised with the fallback's range, however many faces the generated images happen to show.
``details["identity_backend"]`` and ``describe()`` report the choice and the reference detection rates behind it.

With negatives (the base model's samples of the same prompts) the axis is a rate, as in ``embedding_identity``: the
share of faces whose similarity to the centroid passes the character's learned threshold (positives: each reference
face against the centroid of the others; negatives: the faces found in the negatives). Images without a face are
left out of the rate as they are out of the mean; ``face_detection_rate`` says how many that was.

A backend is a subclass that says how to find and embed faces (``embed_faces``); the rest is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from loratune.errors import LoratuneError
from loratune.metrics.base import AxisResult, Backend, EvalImage, Normalisation, References
from loratune.metrics.embedding_identity import mean_or_none, mean_pairwise_cosine
from loratune.metrics.identity_rate import IdentityThreshold, fit_threshold, rate_details, structure_probes

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

DEFAULT_FALLBACK: dict[str, Any] = {"name": "clip_i", "model": "ViT-L-14", "pretrained": "openai"}


class FaceOptions(Backend.Options):
    min_detection_rate: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="below this share of a character's reference images with a face, use the fallback backend",
    )
    fallback: dict[str, Any] | None = Field(
        default_factory=lambda: dict(DEFAULT_FALLBACK),
        description="identity backend used when faces are rarely found (registry name + its options); null = none",
    )

    @field_validator("fallback")
    @classmethod
    def _fallback_is_backend(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and "name" not in v:
            raise ValueError("fallback needs a backend name, e.g. {name: clip_i, model: ViT-L-14}")
        return v


class FaceIdentity(Backend):
    """Shared bookkeeping: which images had a face, their embeddings, reference centroids, the fallback."""

    options: FaceOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fallback = self._build_fallback()
        self.centroids: dict[str | None, torch.Tensor | None] = {}
        self.all_centroid: torch.Tensor | None = None
        self.reference_faces: dict[str, dict[str, int]] = {}
        self.references = References()
        self.use_fallback = False
        self.decision: dict[str, Any] = {"backend": self.spec.name, "reason": "references not seen yet"}
        self.faces: dict[str | None, list[torch.Tensor]] = {}
        self.thresholds: dict[str | None, IdentityThreshold | None] = {}
        self.rated = False
        self.reset()

    def _build_fallback(self) -> Backend | None:
        if self.options.fallback is None:
            return None
        from loratune.config import format_validation_error
        from loratune.metrics.config import BackendConfig
        from loratune.metrics.registry import backend_class, get_spec

        # Built under its own field path, so a bad fallback model or option names `...fallback.<field>`.
        field = f"{self.field_path}.fallback"
        try:
            config = BackendConfig.model_validate(self.options.fallback)
        except ValidationError as err:
            raise LoratuneError(f"{field}.{format_validation_error(err).removeprefix('config error: ')}") from None
        spec = get_spec(config.name, field)
        if spec.name == self.spec.name:
            raise LoratuneError(f"{field}: cannot fall back to {config.name!r} itself")
        if spec.axis != self.spec.axis:
            raise LoratuneError(f"{field}: backend {config.name!r} scores {spec.axis}, not {self.spec.axis}")
        return backend_class(spec)(config, self.runtime, field_path=field)

    def embed_faces(self, images: list[Image.Image]) -> list[np.ndarray | None]:
        """The embedding of the largest face in each image, or None where no face is found."""
        raise NotImplementedError

    def _normalised(self, embeddings: list[np.ndarray | None]) -> list[torch.Tensor | None]:
        import torch

        return [
            None
            if e is None
            else torch.nn.functional.normalize(torch.as_tensor(e, dtype=torch.float32).flatten(), dim=0)
            for e in embeddings
        ]

    def setup(self, references: References) -> None:

        self.references = references or References()
        self.centroids, self.reference_faces, self.faces = {}, {}, {}
        every_face: list[torch.Tensor] = []
        for character, images in self.references.images.items():
            faces = [e for e in self._normalised(self.embed_faces(images)) if e is not None]
            self.reference_faces[character or ""] = {"images": len(images), "with_face": len(faces)}
            self.centroids[character] = self._mean_direction(faces)
            self.faces[character] = faces
            every_face += faces
        self.all_centroid = self._mean_direction(every_face)
        self._choose_backend()
        self.thresholds = {}
        if not self.use_fallback and any(self.references.negatives.values()):
            self.thresholds = {c: self.threshold_for(c) for c in self.references.images}
        # A character without a threshold (one reference) is left out of the rate, and said; the others are rated.
        self.rated = any(t is not None for t in self.thresholds.values())

    def threshold_for(self, character: str | None) -> IdentityThreshold | None:
        """The character's learned threshold: each reference face against the centroid of the others (positives),
        the negatives' faces against the centroid (negatives); None without two reference faces or negatives."""
        import torch

        if character not in self.thresholds:
            key = character if character in self.faces else (None if None in self.faces else "*")
            faces = self.faces.get(key) if key != "*" else [f for fs in self.faces.values() for f in fs]
            centroid, fitted = self._centroid(character), None
            negatives = self.references.negatives_for(character)
            if faces and len(faces) >= 2 and centroid is not None and negatives:
                total = torch.stack(faces).sum(0)
                positives = [float(f @ torch.nn.functional.normalize(total - f, dim=0)) for f in faces]
                found = [e for e in self._normalised(self.embed_faces(negatives)) if e is not None]
                # Shuffled tiles rarely hold a face; those that do are palette-only look-alikes, negatives too.
                probes = self._references_of(character)
                shuffled = [e for e in self._normalised(self.embed_faces(structure_probes(probes))) if e is not None]
                fitted = fit_threshold(positives, [float(e @ centroid) for e in found],
                                       [float(e @ centroid) for e in shuffled])
            self.thresholds[character] = fitted
        return self.thresholds[character]

    def _references_of(self, character: str | None) -> list[Image.Image]:
        return self.references.for_character(character)

    def normalisation(self) -> Normalisation:
        if self.rated:
            return Normalisation(self.spec.name, 0.0, 1.0, True, False, kind="share")
        return super().normalisation()

    def _choose_backend(self) -> None:
        """Face embeddings or the fallback, for the backend's whole life: a function of the references and options."""
        min_rate = self.options.min_detection_rate
        rates = {c: f["with_face"] / f["images"] for c, f in self.reference_faces.items() if f["images"]}
        below = {c: r for c, r in rates.items() if r < min_rate}
        self.decision = {
            "backend": self.spec.name,
            "reference_face_detection_rate": rates,
            "min_detection_rate": min_rate,
        }
        self.use_fallback = False
        if not rates:
            self.decision["reason"] = "no reference images to decide from: face embeddings"
        elif not below:
            self.decision["reason"] = f"faces found in at least {min_rate:.0%} of every character's references"
        elif self.fallback is None:
            self.decision["reason"] = "too few reference faces, but no fallback is configured"
        else:
            character, rate = min(below.items(), key=lambda cr: cr[1])
            whose = f"the references of {character!r}" if character else "the references"
            reason = (
                f"faces found in {rate:.0%} of {whose} "
                f"(< min_detection_rate {min_rate:.0%}); one backend for every character keeps one scale"
            )
            try:
                self.fallback.load()
                self.fallback.setup(self.references)
            except LoratuneError as err:  # e.g. its weights cannot be fetched: keep the face backend, say why
                self.decision.update(reason=reason, fallback_error=str(err))
                return
            self.use_fallback = True
            self.decision.update(backend=self.fallback.spec.name, reason=reason)

    def producer(self) -> Backend:
        return self.fallback if self.use_fallback and self.fallback is not None else self

    def describe(self) -> dict[str, Any]:
        fallback = None if self.fallback is None else self.fallback.describe()
        return {**super().describe(), "identity_backend": self.decision, "fallback": fallback}

    @staticmethod
    def _mean_direction(faces: list[torch.Tensor]) -> torch.Tensor | None:
        import torch

        return torch.nn.functional.normalize(torch.stack(faces).mean(0), dim=0) if faces else None

    def _centroid(self, character: str | None) -> torch.Tensor | None:
        """As ``References.for_character``: the character's faces, else the untied references', else everyone's."""
        if character in self.centroids:
            return self.centroids[character]
        if None in self.centroids:
            return self.centroids[None]
        return self.all_centroid

    def reset(self) -> None:
        self.items: list[EvalImage] = []
        self.embeddings: list[torch.Tensor | None] = []
        if self.use_fallback:
            self.producer().reset()

    def update(self, batch: list[EvalImage]) -> None:
        if self.use_fallback:  # the face embeddings would not be used: skip the detector
            self.producer().update(batch)
            return
        self.items += batch
        self.embeddings += self._normalised(self.embed_faces([item.image for item in batch]))

    def compute(self) -> AxisResult:
        import torch

        if self.use_fallback:
            result = self.producer().compute()
            result.details = {
                **result.details,
                "fallback_from": self.spec.name,
                "identity_backend": self.decision,
                "reference_faces": self.reference_faces,
            }
            return result
        n = len(self.embeddings)
        if n == 0:
            return self.missing("no images", details={"identity_backend": self.decision})
        found = sum(e is not None for e in self.embeddings)
        details: dict[str, Any] = {
            "identity_backend": self.decision,
            "face_detection_rate": found / n,
            "images_with_face": found,
            "images_without_face": [str(item.path) for item, e in zip(self.items, self.embeddings) if e is None],
            "reference_faces": self.reference_faces,
        }
        per_image: list[float | None] = []
        for item, emb in zip(self.items, self.embeddings):
            centroid = self._centroid(item.character)
            per_image.append(None if emb is None or centroid is None else float(emb @ centroid))
        per_character: dict[str, dict[str, Any]] = {}
        across_values: list[float] = []
        for character in dict.fromkeys(item.character for item in self.items):
            rows = [e for item, e in zip(self.items, self.embeddings) if item.character == character and e is not None]
            across = mean_pairwise_cosine(torch.stack(rows))[0] if rows else None
            to_refs = [p for item, p in zip(self.items, per_image) if item.character == character and p is not None]
            per_character[character or ""] = {
                "faces": len(rows),
                "to_reference_centroid": mean_or_none(to_refs),
                "across_generations": across,
            }
            if across is not None:
                across_values.append(across)
        scored = [p for p in per_image if p is not None]
        details.update(
            per_character=per_character,
            to_reference_centroid=mean_or_none(scored),
            across_generations=mean_or_none(across_values),
        )
        if self.rated:  # the scale chosen in setup holds for every image set
            value, passes, rated = rate_details(per_image, [item.character for item in self.items], self.threshold_for)
            details.update(rated, mode="rate: share of faces whose similarity to the reference centroid passes the "
                           "character's threshold; images without a face left out")
            if value is None:
                return self.missing(f"faces found in {found} of {n} images; none could be rated", per_image=passes,
                                    details=details)
            return self.result(value, per_image=passes, details=details)
        if scored:
            details["mode"] = "cosine to the character's reference-face centroid; images without a face left out"
            return self.result(mean_or_none(scored), per_image=per_image, details=details)
        if across_values:
            details["mode"] = "across generations only (no reference faces)"
            return self.result(mean_or_none(across_values), per_image=per_image, details=details)
        return self.missing(
            f"faces found in {found} of {n} images; nothing to compare", per_image=per_image, details=details
        )
