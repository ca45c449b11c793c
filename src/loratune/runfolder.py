"""The run directory, owned here: search, report, demo and dashboard name its files through this module only.

::

    RUN/config.yaml          the run's config (validated when written; ``--resume --set`` may update safe keys)
    RUN/study.db             the Optuna study (SQLite) unless ``search.storage`` names a database server
    RUN/trials/NNNN/         a finished trial: params.json, scores.json, log.txt, checkpoints/, samples/, scores/
    RUN/trials/.NNNN.TAG/    a trial being built (renamed into NNNN when it ends, never over an existing folder)
    RUN/trials/partial/      leftovers of trials that can no longer finish, kept for inspection
    RUN/best/                the selected LoRA, its samples, scores and ``best.json``
    RUN/report.html  RUN/audit.json  RUN/.ask.lock (serialises taking a waiting trial)
    RUN/preferences.jsonl    ``loratune calibrate``'s answers; RUN/calibration.json and RUN/calibrated-weights.yaml
                             what ``--apply`` wrote (both rankings; the weights as a config snippet): the
                             calibrated weights then rank the run (``search.selection.read_ranking``)
    RUN/samples/base/        the base model's own samples (no LoRA): the report's first row, the identity negatives
    RUN/scorer-checks.json   the identity threshold learned from references and those samples (per character),
                             and the quality axis on the references against the same samples
    RUN/finalists/NNNN-eEEEE/  a finalist's fresh samples and scores; RUN/finalists.json lists them all

Importing it is light: no optuna, no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError

STUDY_NAME = "loratune"
CONFIG_FILE = "config.yaml"
SQLITE_FILE = "study.db"
_BUILDING = re.compile(r"^\.(\d{4,})\.")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def sqlite(self) -> Path:
        return self.root / SQLITE_FILE

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def partial(self) -> Path:
        return self.trials / "partial"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def audit(self) -> Path:
        return self.root / "audit.json"

    @property
    def preferences(self) -> Path:
        return self.root / "preferences.jsonl"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def calibrated_weights(self) -> Path:
        return self.root / "calibrated-weights.yaml"

    @property
    def finalists(self) -> Path:
        """The finalists' fresh samples and scores, one folder each (``NNNN-eEEEE``)."""
        return self.root / "finalists"

    @property
    def finalists_file(self) -> Path:
        return self.root / "finalists.json"

    @property
    def scorer_checks(self) -> Path:
        """What the scorers showed before the first trial: the identity threshold and AUC per character, and how
        the quality axis rates the references against the base model's own samples."""
        return self.root / "scorer-checks.json"

    @property
    def ask_lock(self) -> Path:
        return self.root / ".ask.lock"

    def trial(self, number: int) -> Path:
        return self.trials / trial_name(number)

    @classmethod
    def of_trial(cls, trial_dir: Path) -> RunFolder:
        """The run a trial folder (final or being built) belongs to."""
        return cls(Path(trial_dir).resolve().parent.parent)

    def building(self, number: int, tag: str) -> Path:
        """Where trial ``number`` is built (``tag`` tells builders apart: a pid, ``ray``)."""
        return self.trials / f".{trial_name(number)}.{tag}"

    def building_dirs(self, number: int | None = None) -> list[Path]:
        if not self.trials.is_dir():
            return []
        pattern = f".{trial_name(number)}.*" if number is not None else ".*"
        return sorted(p for p in self.trials.glob(pattern) if p.is_dir() and _BUILDING.match(p.name))

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def storage_url(self, storage: str | None) -> str:
        """The study's database: ``storage`` (a server URL) or the SQLite file in the run."""
        if storage:
            if not storage.startswith(("sqlite:///", "postgresql", "mysql")):
                raise LoratuneError(
                    f"search.storage: expected sqlite:///, postgresql:// or mysql:// URL (got {storage!r})")
            return storage
        return f"sqlite:///{self.sqlite.resolve()}"


def trial_name(number: int) -> str:
    return f"{number:04d}"


def building_number(path: Path) -> int | None:
    """The trial number of a folder being built (``.NNNN.TAG``), else None."""
    match = _BUILDING.match(Path(path).name)
    return int(match.group(1)) if match else None


def publish(building: Path, final: Path) -> None:
    """Rename a built trial folder into place, refusing to replace one that exists (another process's trial).

    ``mkdir`` is the claim: of two processes publishing the same number only one creates ``final``; the winner then
    renames its folder over its own empty claim, which POSIX does atomically.
    """
    try:
        final.mkdir()
    except FileExistsError:
        raise LoratuneError(f"{final}: already exists; refusing to overwrite a finished trial's files") from None
    os.replace(building, final)
