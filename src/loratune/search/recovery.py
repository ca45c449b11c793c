"""Resuming a run after a crash, a kill or Ctrl-C: what the study and the run folder need before work goes on.

Finished trials are never touched. Ctrl-C'd trials are retried once more with their params (as Optuna's heartbeat
retry does for a dead process); folders of trials that can no longer finish are set aside in ``trials/partial``;
the leftovers of an interrupted copy to ``RUN/best`` are removed; a baseline that lost every attempt is enqueued again;
and crashed trials whose retries were used up are reported per phase.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from loratune.config import Config
from loratune.runfolder import RunFolder, building_number
from loratune.search.phases import Plan, baseline_lost, fail_reason
from loratune.search.storage import retry_callback


def recover(study: optuna.Study, run: RunFolder, config: Config) -> None:
    """Everything a resume does before asking for trials (the caller holds the run's ask lock)."""
    retry_interrupted(study, config)
    set_aside_partial_dirs(run, study.get_trials(deepcopy=False))
    clean_best_leftovers(run)
    if baseline_lost(study.get_trials(deepcopy=False), Plan.of(config.search)):
        from loratune.search.local import enqueue_baseline

        enqueue_baseline(study, config)


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def retry_interrupted(study: optuna.Study, config: Config) -> None:
    """Ctrl-C'd trials are FAIL with reason ``interrupted``: enqueue each once more, as a crash retry would."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    callback = retry_callback(config.search)
    for t in trials:
        if t.state == TrialState.FAIL and fail_reason(t) == "interrupted" and t.number not in retried:
            callback(study, t)


def set_aside_partial_dirs(run: RunFolder, trials: Sequence[FrozenTrial]) -> None:
    """Folders of trials being built whose trial can no longer finish (failed or crashed) are moved to
    ``trials/partial``, never reused or deleted."""
    states = {t.number: t.state for t in trials}
    for folder in run.building_dirs():
        number = building_number(folder)
        if number is not None and states.get(number) == TrialState.FAIL:
            run.partial.mkdir(parents=True, exist_ok=True)
            os.replace(folder, run.partial / f"{folder.name[1:5]}-{folder.name.rsplit('.', 1)[-1]}")


def clean_best_leftovers(run: RunFolder) -> None:
    """A kill during the copy to RUN/best leaves ``.best.*`` folders beside it; the copy is redone at the end."""
    for leftover in run.root.glob(f".{run.best.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def lost_trials(trials: Sequence[FrozenTrial]) -> Counter[str]:
    """Crashed trials (FAIL without a reason) that no retry follows any more, per phase."""
    retried = retried_numbers(trials)
    return Counter(str(t.user_attrs.get("phase") or "?") for t in trials
                   if t.state == TrialState.FAIL and fail_reason(t) is None and t.number not in retried)
