"""Reading a run directory for the report: the Optuna study, the trial folders, the audit and the models used.

Everything here only reads. The layout is ``loratune.runfolder``'s, the one module that names a run's files.
Files that are missing or unreadable are reported as missing rather than failing the whole report: a report of a
run that is still going, or that crashed, is exactly when people want one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from loratune.errors import LoratuneError, first_line
from loratune.runfolder import STUDY_NAME, RunFolder

if TYPE_CHECKING:
    import optuna

_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class SampleImage:
    path: Path
    prompt: str
    seed: int | None
    character: str | None = None


@dataclass
class EpochSamples:
    epoch: int
    images: list[SampleImage]


@dataclass
class TrialInfo:
    """One Optuna trial joined with its folder's files."""

    trial: optuna.trial.FrozenTrial
    folder: Path | None
    params: dict[str, Any]
    scores: dict[str, Any] | None
    epochs: list[EpochSamples]
    losses: list[tuple[int, float]] = field(default_factory=list)  # (optimizer step, loss) from train_log.jsonl

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def attrs(self) -> dict[str, Any]:
        return self.trial.user_attrs

    @property
    def phase(self) -> str:
        return str(self.attrs.get("phase", "")) or "-"

    @property
    def best_epoch(self) -> int | None:
        value = self.attrs.get("best_epoch")
        if value is None and self.trial.intermediate_values:
            # A trial without the attribute (e.g. pruned before it was written): its best reported epoch.
            value = max(self.trial.intermediate_values.items(), key=lambda kv: kv[1])[0]
        return int(value) if value is not None else None

    @property
    def composite(self) -> float | None:
        """The best epoch's composite: the runner's attr, else the trial's value or its best reported epoch."""
        value = self.attrs.get("composite")
        if value is not None:
            return float(value)
        if self.trial.values and len(self.trial.values) == 1:
            return float(self.trial.values[0])
        if self.trial.intermediate_values and self.best_epoch in self.trial.intermediate_values:
            return float(self.trial.intermediate_values[self.best_epoch])
        return None

    @property
    def axes(self) -> dict[str, float | None]:
        axes = self.attrs.get("axes")
        if isinstance(axes, dict):
            return {str(k): (float(v) if v is not None else None) for k, v in axes.items()}
        for key in ("axes", "normalised"):  # the runner's scores.json, or an evaluation's
            found = (self.scores or {}).get(key)
            if isinstance(found, dict):
                values = {str(k): (v.get("normalised") if isinstance(v, dict) else v) for k, v in found.items()}
                return {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in values.items()}
        return {}

    @property
    def note(self) -> str:
        """Why a trial ended as it did (failure reason, ensemble members, retry), for the trial table."""
        attrs = self.attrs
        parts = []
        if attrs.get("fail_reason"):
            parts.append(str(attrs["fail_reason"]))
        if attrs.get("members"):
            parts.append("merge of trials " + ", ".join(f"#{m}" for m in attrs["members"]))
        if attrs.get("retry_of") is not None:
            parts.append(f"retry of #{attrs['retry_of']}")
        if self.trial.state.name == "PRUNED" and self.trial.intermediate_values:
            parts.append(f"pruned after epoch {max(self.trial.intermediate_values)}")
        return "; ".join(parts)


@dataclass
class BackendUse:
    axis: str
    name: str
    model: str | None
    stand_in: bool
    licence: str | None = None


@dataclass
class RunData:
    run_dir: Path
    study: optuna.study.Study
    trials: list[TrialInfo]
    config: dict[str, Any]
    audit: dict[str, Any] | None
    backends: list[BackendUse]
    base_model: str | None
    base_model_stand_in: bool
    stand_in_notes: list[str] = field(default_factory=list)
    world_notes: list[str] = field(default_factory=list)  # models trained by loratune on its procedural world
    evaluation: dict[str, Any] | None = None  # one checkpoint's full scores.json: weights used, missing axes, versions
    base_samples: EpochSamples | None = None  # the base model without a LoRA, same prompts and seeds (epoch -1)

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    @property
    def any_stand_in(self) -> bool:
        return bool(self.stand_in_notes)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config as plain data. Read raw (not validated): a report must open even for an older run."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def storage_url(run_dir: Path, config: dict[str, Any]) -> str:
    """Where the study lives: a database URL from the run's config, else the SQLite file in the run."""
    search = config.get("search") if isinstance(config.get("search"), dict) else {}
    storage = search.get("storage") if isinstance(search, dict) else None
    if isinstance(storage, str) and "://" in storage:
        return storage
    run = RunFolder(run_dir)
    if not run.sqlite.is_file():
        raise LoratuneError(f"{run_dir}: no {run.sqlite.name} in this folder (is it a loratune run directory?)")
    return run.storage_url(None)


def load_study(run_dir: Path, config: dict[str, Any]) -> optuna.study.Study:
    import optuna

    storage = storage_url(run_dir, config)
    if storage.startswith("sqlite:///"):
        with open(storage.removeprefix("sqlite:///"), "rb") as fh:
            if not fh.read(16).startswith(b"SQLite format 3"):
                raise LoratuneError(f"{RunFolder(run_dir).sqlite}: not an SQLite database")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except KeyError:
        raise LoratuneError(f"{run_dir}: the storage holds no study named {STUDY_NAME!r}") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy/optuna storage errors: a corrupt or foreign database
        raise LoratuneError(f"{run_dir}: cannot read the study ({first_line(err)})") from None


def trial_folder(run_dir: Path, trial: optuna.trial.FrozenTrial) -> Path | None:
    """The trial's folder: the ``trial_dir`` attribute (relative to the run or absolute), else trials/NNNN."""
    recorded = trial.user_attrs.get("trial_dir")
    candidates = []
    if isinstance(recorded, str) and recorded:
        path = Path(recorded)
        candidates.append(path if path.is_absolute() else run_dir / path)
        candidates.append(RunFolder(run_dir).trials / path.name)  # a copied run: the absolute path points elsewhere
    candidates.append(RunFolder(run_dir).trial(trial.number))
    if trial.state.name == "RUNNING":
        # A running trial is built under a temporary name (renamed into place when it ends): show its progress.
        candidates += RunFolder(run_dir).building_dirs(trial.number)
    return next((c for c in candidates if c.is_dir()), None)


def read_samples(epoch_dir: Path) -> list[SampleImage]:
    """A checkpoint's samples in ``samples.jsonl`` order (parsed by ``loratune.manifest``, the one reader of sample
    manifests), else the image files alone when the manifest is missing or unreadable."""
    from loratune.manifest import SAMPLES_MANIFEST, read_manifest

    images: list[SampleImage] = []
    manifest = epoch_dir / SAMPLES_MANIFEST
    if manifest.is_file():
        try:
            rows = read_manifest(manifest)
        except LoratuneError:
            rows = {}  # a half-written or hand-edited manifest: the images still show, without their prompts
        for file, info in rows.items():
            path = epoch_dir / Path(file).name
            if path.is_file():
                images.append(SampleImage(path, info.prompt or "", info.seed, info.character))
    if not images:
        images = [SampleImage(p, "", None) for p in sorted(epoch_dir.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
    return images


def read_epochs(folder: Path | None, attrs: dict[str, Any]) -> list[EpochSamples]:
    """Samples per checkpoint (``samples/epoch-XXXX``), plus the folder the trial names as its best samples when that
    is elsewhere (the ensemble trial samples its merged LoRA into ``samples/<name>``)."""
    if folder is None:
        return []
    epochs = []
    if (folder / "samples").is_dir():
        for sub in sorted((folder / "samples").iterdir()):
            match = _EPOCH_DIR.match(sub.name)
            if match and sub.is_dir():
                images = read_samples(sub)
                if images:
                    epochs.append(EpochSamples(int(match.group(1)), images))
    named = attrs.get("samples")
    if isinstance(named, str) and named and not _EPOCH_DIR.match(Path(named).name) and (folder / named).is_dir():
        images = read_samples(folder / named)
        if images:
            epochs.append(EpochSamples(int(attrs.get("best_epoch") or 0), images))
    return sorted(epochs, key=lambda e: e.epoch)


def read_losses(folder: Path | None) -> list[tuple[int, float]]:
    """(step, loss) per optimizer step from the trainer's ``train_log.jsonl``; a torn or foreign line is skipped
    (the last line of a killed run is often cut off)."""
    path = folder / "train_log.jsonl" if folder is not None else None
    if path is None or not path.is_file():
        return []
    losses = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            losses.append((int(record["step"]), float(record["loss"])))
        except (ValueError, KeyError, TypeError):
            continue
    return losses


def read_base_samples(run_dir: Path, trials: list[TrialInfo]) -> EpochSamples | None:
    """The base model's samples without a LoRA: the run's own (rendered once per run), else the first trial's."""
    from loratune.sampling import BASE_SAMPLES

    for folder in [run_dir] + [info.folder for info in trials if info.folder is not None]:
        if (folder / BASE_SAMPLES).is_dir():
            images = read_samples(folder / BASE_SAMPLES)
            if images:
                return EpochSamples(-1, images)
    return None


def _epoch_scores(trials: list[TrialInfo]) -> dict[str, Any] | None:
    """One evaluation's full scores.json (``trials/NNNN/scores/epoch-XXXX/``): it names the backends that ran."""
    for info in trials:
        if info.folder is None or not (info.folder / "scores").is_dir():
            continue
        candidates = sorted((info.folder / "scores").glob("epoch-*/scores.json"), reverse=True)
        if info.best_epoch is not None:
            candidates.insert(0, info.folder / "scores" / f"epoch-{info.best_epoch:04d}" / "scores.json")
        for path in candidates:
            data = _read_json(path)
            if isinstance(data, dict):
                return data
    return None


def _backends(config: dict[str, Any], trials: list[TrialInfo], evaluation: dict[str, Any] | None) -> list[BackendUse]:
    """Backends as the scores recorded them (with their stand-in flag), else as the run's config names them."""
    from loratune.modelref import is_stand_in

    found: dict[str, BackendUse] = {}
    for scores in [evaluation] + [info.scores for info in trials]:
        listed = (scores or {}).get("backends")
        if isinstance(listed, dict):
            listed = [dict(v, axis=v.get("axis", k)) for k, v in listed.items() if isinstance(v, dict)]
        if not isinstance(listed, list) and isinstance((scores or {}).get("axes"), dict):
            # An evaluation's per-axis block names backend, model and stand-in flag too.
            listed = [dict(v, axis=k, name=v.get("backend")) for k, v in scores["axes"].items()
                      if isinstance(v, dict) and v.get("backend")]
        for entry in listed if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("axis") and entry["axis"] not in found:
                model = entry.get("model")
                stand_in = bool(entry.get("stand_in_weights", entry.get("stand_in", False))) or is_stand_in(model)
                found[entry["axis"]] = BackendUse(entry["axis"], str(entry.get("name", "?")), model, stand_in,
                                                  entry.get("licence"))
    evaluation = config.get("evaluation") if isinstance(config.get("evaluation"), dict) else {}
    configured = evaluation.get("backends") if isinstance(evaluation, dict) else None
    if isinstance(configured, dict):
        from loratune.metrics.registry import BACKENDS

        for axis, backend in configured.items():
            if axis in found or not backend:
                continue
            backend = {"name": backend} if isinstance(backend, str) else backend
            spec = BACKENDS.get(str(backend.get("name")))
            model = backend.get("model") or (spec.default_model if spec else None)
            found[axis] = BackendUse(str(axis), str(backend.get("name")), model, is_stand_in(model),
                                     spec.licence if spec else None)
    from loratune.metrics.registry import AXES

    return sorted(found.values(), key=lambda b: AXES.index(b.axis) if b.axis in AXES else len(AXES))


def load_run(run_dir: str | Path) -> RunData:
    """Read everything the report shows. Raises ``LoratuneError`` when ``run_dir`` is not a run directory."""
    from loratune.modelref import is_stand_in

    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        raise LoratuneError(f"{run_dir}: run directory not found")
    if not run_dir.is_dir():
        raise LoratuneError(f"{run_dir}: not a directory (expected a loratune run directory)")
    config = read_config(run_dir)
    study = load_study(run_dir, config)
    trials = []
    for trial in study.get_trials(deepcopy=False):
        folder = trial_folder(run_dir, trial)
        params = _read_json(folder / "params.json") if folder else None
        scores = _read_json(folder / "scores.json") if folder else None
        trials.append(TrialInfo(trial, folder, params if isinstance(params, dict) else dict(trial.params),
                                scores if isinstance(scores, dict) else None, read_epochs(folder, trial.user_attrs),
                                read_losses(folder)))
    audit = _read_json(RunFolder(run_dir).audit)
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    if audit is None and isinstance(dataset, dict) and dataset.get("path"):
        audit = _read_json(Path(str(dataset["path"])) / "audit.json")  # `loratune audit`'s default place
    evaluation = _epoch_scores(trials)
    backends = _backends(config, trials, evaluation)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    base = model.get("base") if isinstance(model, dict) else None
    base_stand_in = is_stand_in(base)
    notes = [f"base model {base}"] if base_stand_in else []
    notes += [f"{b.axis}: {b.name} ({b.model})" for b in backends if b.stand_in]
    if isinstance(audit, dict) and audit.get("stand_in"):
        names = audit.get("stand_in_backends") or []
        notes.append("dataset audit" + (f": {', '.join(map(str, names))}" if names else ""))
    if not notes and any(t.attrs.get("stand_in") for t in trials):
        notes.append("the search recorded stand-in weights for some trials")
    return RunData(run_dir, study, trials, config, audit if isinstance(audit, dict) else None, backends, base,
                   base_stand_in, notes, world_trained(base, base_stand_in, backends), evaluation,
                   read_base_samples(run_dir, trials))


def world_trained(base: str | None, base_stand_in: bool, backends: list[BackendUse]) -> list[str]:
    """The models that ``loratune world`` wrote and loratune trained on its procedural world (not random, not real)."""
    from loratune.world.folder import find_world

    notes = [f"base model {base}"] if not base_stand_in and find_world(base) else []
    return notes + [f"{b.axis}: {b.name} ({b.model})" for b in backends if not b.stand_in and find_world(b.model)]
