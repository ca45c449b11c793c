"""What the scorers can see, said before the first trial: each check runs the loaded evaluator's own backends on the
references and the base model's own samples (the negatives), never on a trial's.

- ``identity_calibration``: the consistency backend's per-character threshold, its AUC against the negatives and its
  structure AUC against the references cut into shuffled tiles, with a warning where it cannot see the character;
- ``quality_check``: the quality axis on the references against the base model's samples, with a warning when it
  rates what the user wants below an untrained model's output.

The study prints both (``identity_lines`` words the first), ``RUN/scorer-checks.json`` keeps them and the report
shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.metrics.base import STAND_IN_WARNING, EvalImage

if TYPE_CHECKING:
    from loratune.evaluation import Evaluator


def quality_check(evaluator: Evaluator) -> dict[str, Any] | None:
    """The quality axis on the references and on the base model's own samples (the negatives), normalised. A
    metric that rates the user's chosen references below an untrained base model's samples reads this style's
    cleanliness as a defect (PIQE on flat-shaded art does: it cannot tell clean-and-smooth from blurred), so it is
    said before the first trial. None without a quality backend, references or negatives."""
    backend = evaluator.backends.get("quality")
    refs = [img for imgs in evaluator.references.images.values() for img in imgs]
    negatives = [img for imgs in evaluator.references.negatives.values() for img in imgs]
    if backend is None or not refs or not negatives:
        return None
    norm = backend.producer().normalisation()

    def mean_of(images: list[Any]) -> float | None:
        backend.reset()
        size = evaluator.runtime.batch_size
        for start in range(0, len(images), size):
            backend.update([EvalImage(Path(f"{start + i}.png"), img)
                            for i, img in enumerate(images[start:start + size])])
        return norm.apply(backend.compute().value)

    on_refs, on_base = mean_of(refs), mean_of(negatives)
    backend.reset()
    check: dict[str, Any] = {"backend": backend.spec.name, "stand_in": backend.producer().stand_in,
                             "references": on_refs, "base_samples": on_base, "warnings": []}
    if on_refs is not None and on_base is not None and on_refs < on_base:
        check["warnings"].append(
            f"quality ({backend.spec.name}) rates your references below the base model's own samples ({on_refs:.2f} "
            f"vs {on_base:.2f}, normalised): on this style it reads what you want as a defect, so the quality axis "
            "pulls away from your character; consider another evaluation.backends.quality or weight 0"
            + (f" ({STAND_IN_WARNING})" if check["stand_in"] else ""))
    return check


def identity_calibration(evaluator: Evaluator) -> dict[str, Any] | None:
    """What the consistency backend learned from the references and the negatives: per character its threshold
    and AUC, and a warning per character whose AUC is under ``evaluation.identity.min_auc``. None when the axis is
    not a rate (no backend, no negatives, ``evaluation.identity.rate`` false)."""
    backend = evaluator.backends.get("consistency")
    producer = backend.producer() if backend is not None else None
    if producer is None or not getattr(producer, "rated", False):
        return None
    min_auc = evaluator.config.evaluation.identity.min_auc
    fitted = producer.thresholds  # type: ignore[attr-defined]
    thresholds = {c: t for c, t in fitted.items() if t is not None}
    name = producer.spec.name
    warnings = [f"identity ({name}): the references of {c or 'the characters'!r} and the base model's own samples "
                f"barely separate (AUC {t.auc:.2f} < evaluation.identity.min_auc {min_auc:g}); this scorer cannot see "
                "the character, so its rate means little: try another consistency backend"
                for c, t in thresholds.items() if t.auc < min_auc]
    warnings += [f"identity ({name}): for {c or 'the characters'!r} it rates the references cut into shuffled tiles "
                 f"(their colours without the character) about as high as the references themselves (structure AUC "
                 f"{t.structure_auc:.2f}): it sees the palette, not the character, so an over-trained LoRA that paints "
                 "the colours scores as the character; a structure-aware backend (dino with DINOv2, dreamsim, a "
                 "face backend) sees more" for c, t in thresholds.items()
                 if t.structure_auc is not None and t.structure_auc < min_auc]
    warnings += [f"identity ({name}): {c or 'untied references'!r} has fewer than two usable references, so no "
                 "threshold: its samples are left out of the consistency rate" for c, t in fitted.items() if t is None]
    if producer.stand_in:
        warnings = [f"{w} ({STAND_IN_WARNING})" for w in warnings]
    return {"backend": producer.spec.name, "stand_in": producer.stand_in, "min_auc": min_auc, "warnings": warnings,
            "characters": {c or "": t.to_json() for c, t in thresholds.items()}}


def identity_lines(calibration: dict[str, Any]) -> list[str]:
    """``identity_calibration``'s result as the console prints it before the first trial: a line per character,
    then the warnings. A face backend whose shuffled tiles hold no face has no structure AUC, and says so."""
    label = f"identity ({calibration['backend']}{', stand-in weights' if calibration['stand_in'] else ''})"
    lines = []
    for character, t in calibration["characters"].items():
        structure = ("no shuffled reference was scored (none held a face)" if t.get("structure_auc") is None
                     else f"{t['structure_auc']:.2f} against shuffled references")
        lines.append(f"{label}: {character or 'character'} above similarity {t['threshold']:.3f}; AUC {t['auc']:.2f} "
                     f"against the base model's samples, {structure}")
    return lines + list(calibration["warnings"])
