"""The evaluation pipeline: decode images once, run every configured backend, normalise, combine, write.

``Evaluator(config)`` builds and loads the backends once (models are cached per process), so a search can score many
checkpoints with one evaluator. ``score(samples)`` returns an ``EvaluationResult`` whose ``write(out_dir)`` produces
``per_image.csv`` and ``scores.json`` atomically. Each axis is normalised with the range of the backend that produced
its number (``EvaluationResult.normalisations``), which ``scores.json`` names. ``check_evaluation(config)`` validates
every backend name, option and model reference without loading a model.

>>> ev = Evaluator(load_config("loratune.yaml"))  # doctest: +SKIP
>>> ev.score([Sample("out/0.png", prompt="lucaboy on a beach")]).composite  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from loratune.atomic import atomic_write_json, atomic_write_text
from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.images import is_image_file, list_images, load_image
from loratune.learning.meters import LearningMeters
from loratune.manifest import match_prompts
from loratune.metrics.base import STAND_IN_WARNING, AxisResult, Backend, EvalImage, Normalisation, References, Runtime
from loratune.metrics.composite import composite, composite_se
from loratune.metrics.embedding_cache import EmbeddingCache
from loratune.metrics.registry import AXES, create_backend
from loratune.progress import progress_bar
from loratune.records import Sample
from loratune.scorer_checks import identity_calibration

_VERSIONED = ("loratune", "torch", "diffusers", "transformers", "peft", "open_clip_torch", "timm", "pyiqa", "lpips",
              "insightface", "onnxruntime", "optuna")



@dataclass
class EvaluationResult:
    samples: list[Sample]
    axes: dict[str, AxisResult]
    normalised: dict[str, float | None]
    composite: float | None
    weights_used: dict[str, float]
    missing: list[str]
    backends: list[dict[str, Any]]
    runtime: dict[str, Any]
    seconds: float
    normalisations: dict[str, Normalisation]  # per axis: the producing backend's range
    warnings: list[str] = field(default_factory=list)
    copy_risk: Any = None  # loratune.learning.copy_risk.CopyRisk: not an axis, the search's constraint
    cmmd: dict[str, Any] | None = None  # CMMD to the held-out images
    composite_se: float | None = None  # the composite's standard error over the images (bootstrap)

    @property
    def stand_in(self) -> bool:
        return any(r.stand_in for r in self.axes.values())

    @property
    def backends_used(self) -> dict[str, str]:
        """Per axis, the registry name of the backend that produced the number (a face backend's fallback, say)."""
        return {axis: norm.backend for axis, norm in self.normalisations.items()}

    def per_image_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, sample in enumerate(self.samples):
            row: dict[str, Any] = {"file": str(sample.path), "prompt": sample.prompt or "", "seed": sample.seed,
                                   "character": sample.character or ""}
            normed: dict[str, float | None] = {}
            for axis, result in self.axes.items():
                raw = result.per_image[i] if result.per_image is not None else None
                normed[axis] = self.normalisations[axis].apply(raw)
                row[f"{axis}_raw"] = raw
                row[f"{axis}"] = normed[axis]
            per_image = composite(normed, self.weights_used or {a: 1.0 for a in normed})
            row["composite_of_per_image_axes"] = per_image.value
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        axes = {}
        for axis in AXES:
            if axis not in self.axes:
                axes[axis] = {"backend": None, "raw": None, "normalised": None, "missing_reason": "not configured"}
                continue
            r = self.axes[axis]
            axes[axis] = {
                "backend": r.backend,
                "model": r.model_id,
                "raw": r.value,
                "normalised": self.normalised.get(axis),
                "normalisation": self.normalisations[axis].describe(),
                "weight": self.weights_used.get(axis, 0.0),
                "missing_reason": r.missing_reason,
                "stand_in_weights": r.stand_in,
                "details": r.details,
            }
        note = None
        if self.missing:
            note = (f"axes not computed: {', '.join(self.missing)}; they are reported missing (not 0) and the "
                    "composite's weights were renormalised over the others")
        return {
            "loratune_version": _version("loratune"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_images": len(self.samples),
            "composite": self.composite,
            "composite_se": self.composite_se,
            "composite_weights_used": self.weights_used,
            "missing_axes": self.missing,
            "composite_note": note,
            "stand_in_weights": self.stand_in,
            "warnings": self.warnings,
            "axes": axes,
            "backends": self.backends,
            "runtime": self.runtime,
            "seconds": round(self.seconds, 3),
            "versions": {name: _version(name) for name in _VERSIONED},
            "copy_risk": None if self.copy_risk is None else self.copy_risk.to_json(),
            "cmmd": self.cmmd,
        }

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``per_image.csv`` then ``scores.json`` (the latter last: its presence means the evaluation finished)."""
        out_dir = Path(out_dir)
        rows = self.per_image_rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
        csv_path = atomic_write_text(out_dir / "per_image.csv", buf.getvalue())
        json_path = atomic_write_json(out_dir / "scores.json", self.to_json())
        return json_path, csv_path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def load_references(config: Config, references_dir: str | Path | None = None,
                    negatives_dir: str | Path | None = None) -> References:
    """Reference images per character from the config (``dataset.characters.*.references``) and ``--references``.

    A ``--references`` folder with one sub-folder per character name is split by character; otherwise its images
    are references for every character. ``negatives_dir``: the base model's own samples (a folder with the
    ``samples.jsonl`` that sampling writes), each a negative of its prompt's character, from which identity backends
    learn their threshold (unless ``evaluation.identity.rate`` is false).
    """
    from loratune.learning.holdout import holdout_references, training_and_holdout

    refs = References()
    if config.dataset.holdout is not None:
        refs.paths.update(holdout_references(config, training_and_holdout(config)[1]))
    for name, character in config.dataset.characters.items():
        refs.traits[name] = list(character.traits)
        refs.tokens[name] = character.token
        if character.references:
            paths = list_images(character.references, what=f"dataset.characters.{name}.references")
            refs.paths[name] = paths
    if references_dir is not None:
        root = Path(references_dir)
        if not root.exists():
            raise LoratuneError(f"references folder not found: {root}")
        direct = [p for p in root.iterdir() if is_image_file(p)] if root.is_dir() else [root]
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
        if subdirs and not direct:
            for d in subdirs:
                refs.paths[d.name] = list_images(d, what=f"references folder {d}")
        else:
            refs.paths[None] = list_images(root, what="references folder")
    refs.images = {key: [load_image(p) for p in paths] for key, paths in refs.paths.items()}
    if negatives_dir is not None and config.evaluation.identity.rate:
        from loratune.manifest import SAMPLES_MANIFEST, read_manifest

        folder = Path(negatives_dir)
        for name, info in read_manifest(folder / SAMPLES_MANIFEST).items():
            refs.negative_paths.setdefault(info.character, []).append(folder / Path(name).name)
        refs.negatives = {key: [load_image(p) for p in paths] for key, paths in refs.negative_paths.items()}
    return refs


class Evaluator:
    """Builds the configured backends once; scores any number of sample sets with them."""

    def __init__(
        self,
        config: Config,
        references: References | None = None,
        show_progress: bool = True,
        share_embeddings: bool = True,
    ) -> None:
        """``share_embeddings``: backends on the same loaded image encoder (CLIP-I and the LAION aesthetic MLP on one
        CLIP, say) embed each image once per ``score`` call (``metrics.embedding_cache``); False embeds per backend."""
        self.config = config
        self.runtime = evaluation_runtime(config)
        self.show_progress = show_progress
        self.share_embeddings = share_embeddings
        # Build every backend first: option and name errors surface before any model loads.
        self.backends = build_backends(config, self.runtime)
        self.learning = LearningMeters(config, self.runtime)
        self.references = references if references is not None else References()
        self._loaded = False

    def check(self, samples: list[Sample]) -> None:
        """User errors that need no model: prompts where a backend needs them, unknown characters."""
        if not samples:
            raise LoratuneError("no images to evaluate")
        for axis, backend in self.backends.items():
            if backend.spec.needs_prompts:
                lacking = [s.path for s in samples if not s.prompt]
                if lacking:
                    raise LoratuneError(
                        f"{lacking[0]}: no prompt, but evaluation.backends.{axis} ({backend.spec.name}) needs one "
                        f"({len(lacking)} image(s) lack prompts; give --prompts FILE.jsonl/.csv or sidecar .txt files)"
                    )
        known = set(self.config.dataset.characters)
        for s in samples:
            if s.character is not None and known and s.character not in known:
                raise LoratuneError(f"{s.path}: unknown character {s.character!r} (config knows: {', '.join(sorted(known))})")

    def load(self) -> None:
        if self._loaded:
            return
        with progress_bar("loading scorers", total=len(self.backends), enabled=self.show_progress) as advance:
            for backend in self.backends.values():
                backend.load()
                backend.setup(self.references)
                advance(1)
            self.learning.load()
        self._loaded = True

    def score(self, samples: list[Sample]) -> EvaluationResult:
        self.check(samples)
        started = time.perf_counter()
        with progress_bar("decoding images", total=len(samples), enabled=self.show_progress) as advance:
            images = []
            for s in samples:
                images.append(EvalImage(s.path, load_image(s.path), s.prompt, s.seed, s.character))
                advance(1)
        self.load()
        batch_size = self.runtime.batch_size
        results: dict[str, AxisResult] = {}
        total = len(self.backends) * len(images)
        self.runtime.embeddings = EmbeddingCache() if self.share_embeddings else None
        try:
            with progress_bar("scoring", total=total, enabled=self.show_progress) as advance:
                for axis, backend in self.backends.items():
                    backend.reset()
                    for start in range(0, len(images), batch_size):
                        batch = images[start : start + batch_size]
                        backend.update(batch)
                        advance(len(batch))
                    results[axis] = backend.compute()
            copy_risk, cmmd = self.learning.measure(images)
        finally:
            self.runtime.embeddings = None  # the images (and their embeddings) belong to this call only
        # Chosen in setup (a face backend's fallback, say) and fixed from then on: every set is on the same scale.
        norms = {axis: backend.producer().normalisation() for axis, backend in self.backends.items()}
        normalised = {axis: norms[axis].apply(r.value) for axis, r in results.items()}
        weights = dict(self.config.evaluation.weights)
        comp = composite({a: normalised.get(a) for a in weights}, weights)
        spread = composite_se({a: r.per_image for a, r in results.items()},
                              {a: norm.apply for a, norm in norms.items()}, comp.weights_used)
        warnings = [f"{axis} ({r.backend}) {STAND_IN_WARNING}" for axis, r in results.items() if r.stand_in]
        warnings += [f"{axis} ({r.backend}) missing: {r.missing_reason}" for axis, r in results.items() if r.value is None]
        if copy_risk is not None and copy_risk.stand_in:
            warnings.append(f"copy risk ({copy_risk.embedder}) {STAND_IN_WARNING}")
        calibration = identity_calibration(self)
        warnings += calibration["warnings"] if calibration else []
        return EvaluationResult(
            samples=samples,
            axes=results,
            normalised=normalised,
            composite=comp.value,
            weights_used=comp.weights_used,
            missing=comp.missing,
            backends=[{**b.describe(), "stand_in_weights": results[a].stand_in} for a, b in self.backends.items()],
            runtime={"device": str(self.runtime.device), "dtype": str(self.runtime.dtype).removeprefix("torch."),
                     "batch_size": batch_size, "python": platform.python_version()},
            seconds=time.perf_counter() - started,
            normalisations=norms,
            warnings=warnings,
            copy_risk=copy_risk,
            cmmd=cmmd,
            composite_se=spread,
        )


def evaluation_runtime(config: Config) -> Runtime:
    """Where and how ``evaluation`` backends run: the configured device and dtype (``auto`` resolved for it)."""
    from loratune.device import pick_device, torch_dtype

    ev = config.evaluation
    device = pick_device(ev.device)
    return Runtime(device=device, dtype=torch_dtype(ev.dtype, device), batch_size=ev.batch_size,
                   trust_remote_code=ev.trust_remote_code)


def build_backends(config: Config, runtime: Runtime) -> dict[str, Backend]:
    """Every configured backend, built but not loaded: names, options and model references checked, per axis."""
    backends: dict[str, Backend] = {}
    for axis in AXES:
        backend_config = config.evaluation.backends.get(axis)  # type: ignore[call-overload]
        if backend_config is not None:
            backends[axis] = create_backend(backend_config, runtime, axis)
    if not backends:
        raise LoratuneError("evaluation.backends: no backend configured")
    return backends


def check_evaluation(config: Config) -> None:
    """Raise ``LoratuneError`` naming ``evaluation.backends.<axis>.<field>`` for a bad backend option or model reference.

    Builds each backend (and a face backend's fallback) without loading weights or touching the accelerator, so a
    search can call it before its first trial.
    """
    ev = config.evaluation
    build_backends(config, Runtime(batch_size=ev.batch_size, trust_remote_code=ev.trust_remote_code))


def check_models(config: Config, base: bool = True) -> None:
    """Raise one line naming the config key when a model the run needs is not on this machine (nor, online, on the
    hub): ``model.base`` (unless ``base=False``) and each backend's hub ``model``. Loads nothing."""
    from loratune.modelref import check_model_available, looks_like_hub_id

    if base:
        check_model_available(config.model.base, "model.base")
        from loratune.singlefile.load import components_folder

        components_folder(config.model.base, config.model.family, config.model.config)  # a one-file base's configs
    for axis, backend in config.evaluation.backends.items():
        if backend is not None and backend.model and looks_like_hub_id(backend.model):
            check_model_available(backend.model, f"evaluation.backends.{axis}.model")
    learning = config.evaluation.learning
    embedders = {"copy_embedder": learning.copy_embedder if config.dataset.path else None,
                 "cmmd_embedder": learning.cmmd_embedder if config.dataset.holdout is not None else None}
    for name, embedder in embedders.items():
        if embedder is not None and embedder.name != "sscd" and embedder.model and looks_like_hub_id(embedder.model):
            check_model_available(embedder.model, f"evaluation.learning.{name}.model")


def collect_samples(images: str | Path, prompts: str | Path | None = None) -> list[Sample]:
    """Samples for every image in ``images`` (a folder or one file) with prompts from a manifest or sidecars."""
    paths = list_images(images, what="images folder")
    info = match_prompts(paths, prompts)
    return [Sample(p, info[p].prompt, info[p].seed, info[p].character) for p in paths]


def evaluate_images(
    images: str | Path,
    config: Config,
    prompts: str | Path | None = None,
    references: str | Path | None = None,
    out_dir: str | Path | None = None,
    show_progress: bool = True,
) -> tuple[EvaluationResult, Path]:
    """The ``loratune evaluate`` API: score a folder of images and write ``scores.json`` + ``per_image.csv``."""
    samples = collect_samples(images, prompts)
    evaluator = Evaluator(config, show_progress=show_progress)
    evaluator.check(samples)
    evaluator.references = load_references(config, references)
    result = evaluator.score(samples)
    images_path = Path(images)
    target = Path(out_dir) if out_dir is not None else (images_path if images_path.is_dir() else images_path.parent)
    json_path, _ = result.write(target)
    return result, json_path
