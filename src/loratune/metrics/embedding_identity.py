"""Character consistency by image-embedding similarity (CLIP-I, DINO-style).

Two measurements per character, both cosine similarities of L2-normalised image embeddings:

* **to references**: each generation against the character's reference images (mean over references); these are
  the per-image values and, when references exist, the backend's value;
* **across generations**: mean pairwise similarity among the generations of the same character (images without a
  character form one group); the value when there are no references, and reported in the details either way.

Reference embeddings are computed once per character (in ``setup`` for every character that has references).

With negatives (``References.negatives``: the base model's samples of the same prompts) the axis is a **rate**: the
share of generations whose similarity to the references passes the threshold learned per character from the
references (leave-one-out) and the negatives (``loratune.metrics.identity_rate``). The mean similarity stays in the
details. The choice is made in ``setup``, so every image set of a study is on the same scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loratune.metrics.base import AxisResult, Backend, EvalImage, Normalisation, References
from loratune.metrics.embedding_cache import embed_images
from loratune.metrics.identity_rate import (
    IdentityThreshold,
    fit_threshold,
    leave_one_out_mean,
    rate_details,
    structure_probes,
)
from loratune.metrics.openclip_models import ImageEmbedder, load_clip_image, load_hf_vision, resolve_clip_image
from loratune.metrics.timm_models import is_timm_folder, is_timm_name, load_timm
from loratune.modelref import check_model_ref, is_stand_in

if TYPE_CHECKING:
    import torch

NO_CHARACTER = "(no character)"  # images without a character form one group of their own


def mean_pairwise_cosine(embeddings: torch.Tensor) -> tuple[float | None, list[float | None]]:
    """Mean cosine over distinct pairs of normalised rows, and each row's mean similarity to the others."""
    n = embeddings.shape[0]
    if n < 2:
        return None, [None] * n
    sims = embeddings @ embeddings.T
    off_diagonal = sims.sum(1) - sims.diagonal()
    per_row = (off_diagonal / (n - 1)).tolist()
    return float(off_diagonal.sum() / (n * (n - 1))), per_row


def mean_or_none(values: list[float]) -> float | None:
    """The mean, or None for no values (a missing measurement is never 0)."""
    return sum(values) / len(values) if values else None


class _EmbeddingIdentity(Backend):
    encoder: ImageEmbedder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.references = References()
        self._reference_embeddings: dict[str | None, torch.Tensor | None] = {}
        self.thresholds: dict[str | None, IdentityThreshold | None] = {}
        self.rated = False
        self.reset()

    @property
    def model_field(self) -> str:
        return f"{self.field_path}.model"

    def embed(self, images: list[Any]) -> torch.Tensor:
        return embed_images(self.runtime, self.encoder, images)

    def setup(self, references: References) -> None:
        self.references = references or References()
        self._reference_embeddings = {}
        for character in self.references.images:
            self._references_for(character)
        self.thresholds = {}
        if any(self.references.negatives.values()):
            self.thresholds = {c: self.threshold_for(c) for c in self.references.images}
        # A character without a threshold (one reference) is left out of the rate, and said; the others are rated.
        self.rated = any(t is not None for t in self.thresholds.values())

    def threshold_for(self, character: str | None) -> IdentityThreshold | None:
        """The character's learned "is it there?" threshold (computed once), or None without negatives or with
        fewer than two references."""
        if character not in self.thresholds:
            refs = self._references_for(character)
            negatives = self.references.negatives_for(character)
            fitted = None
            if refs is not None and negatives:
                positives = leave_one_out_mean(refs @ refs.T)
                probes = structure_probes(self.references.for_character(character))
                fitted = fit_threshold(positives, (self.embed(negatives) @ refs.T).mean(1).tolist(),
                                       (self.embed(probes) @ refs.T).mean(1).tolist())
            self.thresholds[character] = fitted
        return self.thresholds[character]

    def normalisation(self) -> Normalisation:
        if self.rated:
            return Normalisation(self.spec.name, 0.0, 1.0, True, False, kind="share")
        return super().normalisation()

    def _references_for(self, character: str | None) -> torch.Tensor | None:
        if character not in self._reference_embeddings:
            images = self.references.for_character(character) if self.references else []
            self._reference_embeddings[character] = self.embed(images) if images else None
        return self._reference_embeddings[character]

    def reset(self) -> None:
        self._characters: list[str | None] = []
        self._embeddings: list[torch.Tensor] = []
        self._to_references: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        embeddings = self.embed([img.image for img in batch])
        for img, emb in zip(batch, embeddings):
            refs = self._references_for(img.character)
            self._to_references.append(None if refs is None else float((refs @ emb).mean()))
            self._characters.append(img.character)
            self._embeddings.append(emb)

    def compute(self) -> AxisResult:
        import torch

        if not self._embeddings:
            return self.missing("no images")
        per_character: dict[str, dict[str, Any]] = {}
        across_per_image: list[float | None] = [None] * len(self._embeddings)
        across_values: list[float] = []
        for character in dict.fromkeys(self._characters):
            rows = [i for i, c in enumerate(self._characters) if c == character]
            across, per_row = mean_pairwise_cosine(torch.stack([self._embeddings[i] for i in rows]))
            for i, value in zip(rows, per_row):
                across_per_image[i] = value
            to_refs = [self._to_references[i] for i in rows if self._to_references[i] is not None]
            per_character[NO_CHARACTER if character is None else character] = {
                "images": len(rows),
                "to_references": mean_or_none(to_refs),  # type: ignore[arg-type]
                "across_generations": across,
                "references": 0 if self._references_for(character) is None else len(self._references_for(character)),
            }
            if across is not None:
                across_values.append(across)
        to_refs_all = [v for v in self._to_references if v is not None]
        details: dict[str, Any] = {
            "to_references": mean_or_none(to_refs_all),
            "across_generations": mean_or_none(across_values),
            "per_character": per_character,
        }
        if self.rated:  # the scale chosen in setup holds for every image set: a share, never a similarity
            value, passes, rated = rate_details(self._to_references, self._characters, self.threshold_for)
            details.update(rated, mode="rate: share of images whose mean similarity to the references passes the "
                           "character's threshold (learned from the references and the base model's samples)")
            if value is None:
                return self.missing("no image could be rated against a threshold", per_image=passes, details=details)
            return self.result(value, per_image=passes, details=details)
        if to_refs_all:
            details["mode"] = "similarity to reference images (mean over references); across generations in details"
            if len(to_refs_all) < len(self._to_references):
                details["images_without_references"] = len(self._to_references) - len(to_refs_all)
            return self.result(mean_or_none(to_refs_all), per_image=list(self._to_references), details=details)
        if not across_values:
            return self.missing(
                "no reference images and no character with two or more generations",
                per_image=list(self._to_references),
                details=details,
            )
        details["mode"] = "across generations only: no reference images (per-image = mean similarity to the others)"
        return self.result(mean_or_none(across_values), per_image=across_per_image, details=details)


class ClipImageIdentity(_EmbeddingIdentity):
    """CLIP-I: open_clip (name/tag, ``hf-hub:``, local folder or checkpoint) or transformers CLIP image embeddings."""

    class Options(Backend.Options):
        library: Literal["auto", "open_clip", "hf"] = Field(
            "auto",
            description="auto: open_clip for open_clip names/folders/files and hf-hub:, transformers for other hub ids",
        )
        pretrained: str | None = Field(None, description="open_clip pretrained tag, checkpoint file, or 'random'")
        architecture: str | None = Field(None, description="open_clip model name when `model` is a checkpoint file")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        opts = self.options
        self.clip = resolve_clip_image(
            self.model_id, opts.library, opts.pretrained, opts.architecture, self.model_field
        )
        self.library = self.clip.library
        self.stand_in = self.clip.stand_in

    def load(self) -> None:
        self.encoder = load_clip_image(self.clip, self.runtime, self.model_field)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.clip.label, "library": self.library}


class DinoIdentity(_EmbeddingIdentity):
    """DINO-style: any transformers vision model (CLS / pooled) or timm model (name, hf-hub:, folder, checkpoint)."""

    class Options(Backend.Options):
        library: Literal["auto", "hf", "timm"] = Field(
            "auto",
            description="auto: timm for timm names, hf-hub:, timm folders and checkpoint files; else transformers",
        )
        pooling: Literal["auto", "cls", "pooled", "mean"] = Field(
            "auto", description="transformers models: pooled output when there is one, else the CLS token"
        )
        architecture: str | None = Field(None, description="timm model name when `model` is a checkpoint file")
        pretrained: bool = Field(True, description="timm registry names: load pretrained weights (false: random)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        ref = self.model_id
        path = Path(ref).expanduser()
        if self.options.library != "auto":
            self.library = self.options.library
        elif path.is_dir():
            self.library = "timm" if is_timm_folder(path) else "hf"
        elif path.is_file() or ref.startswith("hf-hub:") or is_timm_name(ref):
            self.library = "timm"
        else:
            self.library = "hf"
        if self.library == "hf":
            self.model_id = check_model_ref(ref, self.model_field)
            self.stand_in = is_stand_in(self.model_id)
        elif not (path.exists() or ref.startswith("hf-hub:") or is_timm_name(ref)):
            self.model_id = check_model_ref(ref, self.model_field)  # raises "model path not found"
        else:
            self.stand_in = is_stand_in(ref) or (is_timm_name(ref) and not self.options.pretrained)

    def load(self) -> None:
        rt = self.runtime
        assert self.model_id is not None
        if self.library == "hf":
            self.encoder = load_hf_vision(
                self.model_id, rt.device, rt.dtype, self.model_field, self.options.pooling, rt.trust_remote_code
            )
        else:
            self.encoder, stand_in = load_timm(
                self.model_id, rt.device, rt.dtype, self.model_field, self.options.architecture, self.options.pretrained
            )
            self.stand_in = self.stand_in or stand_in

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "library": self.library}
