"""``run_audit``: check a training set before training and say which files need attention.

Measured per image: caption state and length in CLIP tokens, whether the caption names its character's trigger,
caption↔image alignment with the configured alignment backend (captions as prompts; VLM trait checks come along when
the backend is VQAScore), technical quality with a weight-free metric (PIQE by default), sharpness (variance of the
Laplacian), a perceptual hash and, when the configured consistency backend is an image-embedding one (clip_i, dino,
dreamsim), an embedding — with its similarity to the centroid of its character's reference images ("character
presence") — and whether dlib's face detector finds a face.

Flags are relative to the dataset itself wherever an absolute threshold would be arbitrary: an image is flagged for
quality, sharpness or alignment when it is a robust outlier on the bad side of the dataset's median (see
``checks.robust_outliers``), so a uniformly stylised set is not flagged wholesale. Near-duplicates are pairs within a
few bits of perceptual hash (and, with real embedding weights, pairs above a cosine threshold). Images without a face
are flagged only in folders where most images have one (a cartoon set without detectable faces is not flagged).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loratune.audit import checks
from loratune.audit.references import character_presence, leak_warning, reference_leaks
from loratune.audit.scan import DatasetEntry, scan_for_audit
from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.evaluation import evaluation_runtime
from loratune.images import load_image
from loratune.metrics.base import Backend, EvalImage, References, Runtime
from loratune.metrics.config import BackendConfig


@dataclass
class AuditOptions:
    alignment: bool = True  # run the configured alignment backend on the captions
    embeddings: bool = True  # embed images with the consistency backend when it is an embedding model
    faces: bool = True  # detect faces with dlib
    quality_backend: str = "piqe"  # a quality backend from the registry (weight-free PIQE works offline)
    duplicate_hash_bits: int = 6  # pHash Hamming distance (of 64 bits) at or below which two images are near-duplicates
    duplicate_cosine: float = 0.97  # embedding cosine at or above which two images are near-duplicates
    outlier_z: float = 3.0  # robust z-score for quality / alignment outliers
    blur_ratio: float = 0.15  # sharpness under this fraction of the dataset median = blurry
    min_face_rate: float = 0.5  # folders whose face rate is at least this flag their images without a face
    lowest: int = 3  # how many lowest-alignment images audit.json lists
    max_tokens: int = checks.CLIP_MAX_TOKENS


@dataclass
class ImageReport:
    file: str
    folder: str
    character: str | None
    caption: str | None
    caption_state: str
    caption_tokens: int | None = None
    width: int | None = None
    height: int | None = None
    alignment: float | None = None
    quality: float | None = None
    sharpness: float | None = None
    phash: str | None = None
    face: bool | None = None
    character_similarity: float | None = None  # embedding cosine to the centroid of its character's references
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditResult:
    data: dict[str, Any]  # the content of audit.json
    path: Path | None = None

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return self.data["flagged"]


def _character_of(entry: DatasetEntry, config: Config) -> str | None:
    """The config character a training image belongs to: by its kohya folder's words, else by its caption."""
    chars = config.dataset.characters
    for name, c in chars.items():
        if entry.token and entry.token.lower() in (name.lower(), c.token.lower()):
            return name
    caption = (entry.caption or "").lower()
    for name, c in chars.items():
        if c.token.lower() in caption:
            return name
    return None


def _backend(
    config: BackendConfig | None, runtime: Runtime, axis: str, purpose: str, flag: str, needs: str | None = None
) -> Backend | None:
    """The configured backend of ``axis``, built (model reference checked) but not loaded; None when the config
    sets the axis to null. A check that cannot run is an error naming the flag that turns it off: an audit that
    exits 0 must have done what it says."""
    from loratune.metrics.registry import create_backend
    from loratune.modelref import check_model_available, looks_like_hub_id

    if config is None:
        return None
    try:
        if config.model and looks_like_hub_id(config.model):
            check_model_available(config.model, f"evaluation.backends.{axis}.model")
        backend = create_backend(config, runtime, axis)
    except LoratuneError as err:
        raise LoratuneError(f"{purpose}: {err} (or pass {flag} to audit without it)") from None
    if needs is not None and not hasattr(backend, needs):
        raise LoratuneError(f"{purpose}: evaluation.backends.{axis} ({config.name}) cannot {needs} images; choose one "
                            f"that can, or pass {flag} to audit without it")
    return backend


def _load(backend: Backend, purpose: str, flag: str) -> Backend:
    try:
        backend.load()
    except LoratuneError as err:
        raise LoratuneError(f"{purpose}: {err} (or pass {flag} to audit without it)") from None
    return backend


def _run_backend(backend: Backend, items: list[EvalImage], batch_size: int) -> Any:
    backend.reset()
    for start in range(0, len(items), batch_size):
        backend.update(items[start : start + batch_size])
    return backend.compute()


def run_audit(
    dataset: str | Path,
    config: Config,
    options: AuditOptions | None = None,
    out_dir: str | Path | None = None,
) -> AuditResult:
    """Audit ``dataset``; writes ``out_dir/audit.json`` (atomically) when ``out_dir`` is given."""
    import imagehash

    from loratune.atomic import atomic_write_json
    from loratune.metrics.registry import create_backend

    opts = options or AuditOptions()
    layout, entries = scan_for_audit(dataset, config.dataset.caption_extension)
    root = Path(dataset)
    runtime = evaluation_runtime(config)
    # Every model the audit needs, checked before any image is scored.
    align_config = config.evaluation.backends.get("alignment")  # type: ignore[call-overload]
    consistency_config = config.evaluation.backends.get("consistency")  # type: ignore[call-overload]
    align_purpose, embed_purpose = "caption↔image alignment", "image embeddings (duplicates, diversity)"
    aligner = _backend(align_config, runtime, "alignment", align_purpose, "--no-alignment") if opts.alignment else None
    embedder = _backend(consistency_config, runtime, "consistency", embed_purpose, "--no-embeddings", "embed") \
        if opts.embeddings else None
    backends: list[dict[str, Any]] = []
    warnings: list[str] = []
    stand_in: list[str] = []  # backends whose scores came from stand-in weights

    reports: list[ImageReport] = []
    images: dict[int, Any] = {}
    for index, entry in enumerate(entries):
        relative = entry.image.relative_to(root).as_posix()
        rep = ImageReport(relative, entry.folder, _character_of(entry, config), entry.caption, entry.caption_state)
        reports.append(rep)
        try:
            img = load_image(entry.image)
        except LoratuneError as err:
            rep.problems.append(f"unreadable image: {err}")
            continue
        images[index] = img
        rep.width, rep.height = img.size
        rep.sharpness = checks.sharpness(np.asarray(img.convert("L")))
        rep.phash = str(imagehash.phash(img))
    ok = sorted(images)
    if not ok:
        first = next(p for r in reports for p in r.problems)
        raise LoratuneError(f"{root}: none of its {len(entries)} images can be decoded (first: {first})")

    # --- captions -----------------------------------------------------------------------------------------------------
    for entry, rep in zip(entries, reports):
        if entry.caption_state != "ok":
            sidecar = entry.image.with_suffix(config.dataset.caption_extension).name
            rep.problems.append(f"caption {entry.caption_state} ({sidecar})")
            continue
        assert entry.caption is not None
        rep.caption_tokens = checks.clip_token_count(entry.caption)
        if rep.caption_tokens > opts.max_tokens:
            rep.problems.append(
                f"caption too long: {rep.caption_tokens} CLIP tokens (> {opts.max_tokens}; the rest is cut off)"
            )
        trigger = config.dataset.characters[rep.character].token if rep.character else entry.token
        if trigger and trigger.lower() not in entry.caption.lower():
            rep.problems.append(f"caption lacks the trigger words {trigger!r}")

    # --- near-duplicates by perceptual hash ---------------------------------------------------------------------------
    hashes = [imagehash.hex_to_hash(reports[i].phash) for i in ok]
    duplicates: dict[tuple[int, int], dict[str, Any]] = {}
    for a, b, d in checks.hash_pairs(hashes, opts.duplicate_hash_bits):
        duplicates[(ok[a], ok[b])] = {"a": reports[ok[a]].file, "b": reports[ok[b]].file, "phash_distance": d}

    # --- technical quality and sharpness ------------------------------------------------------------------------------
    quality = create_backend(BackendConfig(name=opts.quality_backend), runtime, "quality")
    quality.load()
    quality_result = _run_backend(quality, [EvalImage(entries[i].image, images[i]) for i in ok], runtime.batch_size)
    backends.append(quality.describe())
    if quality_result.stand_in:
        stand_in.append(quality.spec.name)
        warnings.append(f"quality ({quality.spec.name}) ran on stand-in weights: its scores mean nothing")
    for i, value in zip(ok, quality_result.per_image or []):
        reports[i].quality = value
    q_values = [reports[i].quality for i in ok]
    for k in checks.robust_outliers(
        q_values, high_is_bad=not quality.spec.higher_is_better, z=opts.outlier_z, min_gap=5.0
    ):
        median = statistics.median(q_values)
        reports[ok[k]].problems.append(
            f"low technical quality: {quality.spec.name} {q_values[k]:.1f} (dataset median {median:.1f})"
        )
    sharp = [reports[i].sharpness or 0.0 for i in ok]
    for k in checks.low_ratio(sharp, opts.blur_ratio):
        reports[ok[k]].problems.append(
            f"blurry: sharpness {sharp[k]:.1f} (dataset median {statistics.median(sharp):.1f})"
        )

    # --- caption ↔ image alignment (+ VLM trait checks) ---------------------------------------------------------------
    alignment_data: dict[str, Any] | None = None
    if aligner is not None:
        _load(aligner, align_purpose, "--no-alignment")
        refs = References(traits={n: list(c.traits) for n, c in config.dataset.characters.items()})
        aligner.setup(refs)
        captioned = [i for i in ok if entries[i].caption]
        items = [
            EvalImage(entries[i].image, images[i], prompt=entries[i].caption, character=reports[i].character)
            for i in captioned
        ]
        result = _run_backend(aligner, items, runtime.batch_size)
        backends.append({**aligner.describe(), "stand_in_weights": result.stand_in})
        for i, value in zip(captioned, result.per_image or []):
            reports[i].alignment = value
        scores = [reports[i].alignment for i in captioned]
        lo, hi = align_config.norm_range or aligner.spec.norm_range
        # A tenth of the backend's normalisation range: differences smaller than that are noise, not a bad caption.
        low = checks.robust_outliers(
            scores, not aligner.spec.higher_is_better, z=opts.outlier_z, min_gap=0.1 * (hi - lo)
        )
        for k in low:
            reports[captioned[k]].problems.append(
                f"caption may not match the image: {aligner.spec.name} {scores[k]:.3f} "
                f"(dataset median {statistics.median([s for s in scores if s is not None]):.3f})"
            )
        ranked = sorted((i for i in captioned if reports[i].alignment is not None), key=lambda i: reports[i].alignment)
        if not aligner.spec.higher_is_better:
            ranked.reverse()
        alignment_data = {
            "backend": aligner.spec.name,
            "model": aligner.model_id,
            "stand_in": result.stand_in,
            "mean": result.value,
            "lowest": [
                {"file": reports[i].file, "score": reports[i].alignment, "caption": reports[i].caption}
                for i in ranked[: opts.lowest]
            ],
        }
        if "traits" in result.details:
            alignment_data["traits"] = result.details["traits"]
        if result.stand_in:
            stand_in.append(aligner.spec.name)
            warnings.append(f"alignment ({aligner.spec.name}) ran on stand-in weights: its scores mean nothing")

    # --- embeddings: near-duplicates and diversity --------------------------------------------------------------------
    diversity: dict[str, Any] = {"phash_mean_distance": checks.mean_pairwise_hash_distance(hashes)}
    emb = None
    if embedder is not None:
        _load(embedder, embed_purpose, "--no-embeddings")
        emb = embedder.embed([images[i] for i in ok]).float().cpu().numpy()
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        diversity["embedding"] = checks.embedding_diversity(emb)
        diversity["embedding_backend"] = embedder.spec.name
        backends.append(embedder.describe())
        if embedder.stand_in:
            stand_in.append(embedder.spec.name)
            warnings.append(f"embeddings ({embedder.spec.name}) are stand-in weights: embedding duplicates not flagged")
        else:
            for a, b, cos in checks.cosine_pairs(emb, opts.duplicate_cosine):
                pair = duplicates.setdefault((ok[a], ok[b]), {"a": reports[ok[a]].file, "b": reports[ok[b]].file})
                pair["cosine"] = cos
        character_presence(embedder, emb, ok, reports, config, opts.outlier_z, warnings)
    leaks = reference_leaks(config, [reports[i].file for i in ok], hashes, emb, embedder, opts.duplicate_hash_bits,
                            opts.duplicate_cosine)
    warnings += [w for w in [leak_warning(leaks)] if w]
    for (i, j), pair in sorted(duplicates.items()):
        how = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in pair.items() if k not in ("a", "b"))
        reports[i].problems.append(f"near-duplicate of {reports[j].file} ({how})")
        reports[j].problems.append(f"near-duplicate of {reports[i].file} ({how})")

    # --- faces --------------------------------------------------------------------------------------------------------
    faces: dict[str, Any] | None = None
    if opts.faces and ok:
        from loratune.metrics.dlib_identity import load_dlib

        try:
            detector = load_dlib()[0]
        except LoratuneError as err:
            raise LoratuneError(f"face detection: {err} (or pass --no-faces to audit without it)") from None
        for i in ok:
            reports[i].face = len(detector(np.ascontiguousarray(np.asarray(images[i])), 1)) > 0
        per_folder: dict[str, list[bool]] = defaultdict(list)
        for i in ok:
            per_folder[reports[i].folder].append(bool(reports[i].face))
        faces = {
            "detector": "dlib HOG (frontal faces)",
            "face_rate": sum(reports[i].face for i in ok) / len(ok),
            "per_folder": {f or ".": sum(v) / len(v) for f, v in per_folder.items()},
        }
        for i in ok:
            rate = sum(per_folder[reports[i].folder]) / len(per_folder[reports[i].folder])
            if not reports[i].face and rate >= opts.min_face_rate:
                reports[i].problems.append(f"no face found (its folder's face rate is {rate:.0%})")

    # --- summary ------------------------------------------------------------------------------------------------------
    per_character: dict[str, dict[str, Any]] = {}
    for name in list(config.dataset.characters) + [None]:
        mine = [r for r in reports if r.character == name]
        if mine:
            sims = [r.character_similarity for r in mine if r.character_similarity is not None]
            per_character[name or ""] = {
                "images": len(mine),
                "flagged": sum(bool(r.problems) for r in mine),
                "reference_similarity": sum(sims) / len(sims) if sims else None,
            }
    flagged = [{"file": r.file, "problems": r.problems} for r in reports if r.problems]
    data: dict[str, Any] = {
        "dataset": str(root.resolve()),  # per-image "file" paths are relative to this folder
        "layout": layout,
        "images": len(reports),
        "stand_in": bool(stand_in),
        "stand_in_backends": stand_in,
        "warnings": warnings,
        "summary": {
            "flagged_images": len(flagged),
            "caption_problems": sum(r.caption_state != "ok" for r in reports),
            "long_captions": sum(1 for r in reports if (r.caption_tokens or 0) > opts.max_tokens),
            "near_duplicate_pairs": len(duplicates),
            "unreadable_images": len(reports) - len(ok),
            "face_rate": None if faces is None else faces["face_rate"],
            "alignment_mean": None if alignment_data is None else alignment_data["mean"],
            "quality_median": statistics.median(q_values) if q_values else None,
        },
        "options": asdict(opts),
        "backends": backends,
        "alignment": alignment_data,
        "near_duplicates": list(duplicates.values()),
        "reference_leaks": leaks,
        "quality": {
            "backend": quality.spec.name,
            "higher_is_better": quality.spec.higher_is_better,
            "median": statistics.median(q_values) if q_values else None,
            "sharpness_median": statistics.median(sharp) if sharp else None,
        },
        "diversity": diversity,
        "faces": faces,
        "characters": per_character,
        "per_image": [asdict(r) for r in reports],
        "flagged": flagged,
    }
    path = None
    if out_dir is not None:
        path = atomic_write_json(Path(out_dir) / "audit.json", data)
    return AuditResult(data, path)
