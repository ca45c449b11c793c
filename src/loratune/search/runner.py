"""``loratune optimize``: the three-phase study over a run directory, resumable, with N local worker processes.

The module map of ``loratune.search``:
``phases`` (the plan: which phase a trial is in, when the study is done, the refine space) · ``samplers`` (Optuna
samplers and pruners from the config) · ``selection`` (the one ranking rule: every scored epoch is a candidate) ·
``trial`` (one trial, written once: train → score each epoch → report/prune → files) · ``local`` (a worker process
asking for trials) · ``ray_backend`` (the same workers as Ray actors) · ``recovery`` (what a resume repairs) · this
module (the front door: create or reopen the run, start workers, copy the winner to RUN/best).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from loratune.atomic import atomic_dir, atomic_write_json, atomic_write_text
from loratune.config import Config, apply_override, dump_config, load_config, validate_config
from loratune.errors import LoratuneError
from loratune.runfolder import CONFIG_FILE, STUDY_NAME, RunFolder
from loratune.search.claims import held
from loratune.search.finalists import score_finalists
from loratune.search.local import Worker
from loratune.search.recovery import lost_trials, recover, set_aside_partial_dirs
from loratune.search.selection import Ranking, pick, read_ranking
from loratune.search.space import check_space
from loratune.search.storage import open_storage, study_exists
from loratune.search.study import create_or_join, record_config
from loratune.search.trial import epoch_lora, epoch_samples
from loratune.search.trials import TrialBackend, check_backend, load_backend
from loratune.search.warm import read_sources

# Keys that ``--resume --set`` may change: how the study goes on, not what a finished trial's numbers mean.
RESUMABLE_KEYS = ("search.n_trials", "search.workers", "search.heartbeat_interval", "search.grace_period",
                  "search.max_retry", "search.backend", "search.pruner", "search.patience", "search.noise_margin",
                  "search.phases.", "search.ray.", "search.finalists", "search.finalists_per_trial",
                  "search.finalist_samples", "evaluation.device", "evaluation.batch_size")
# Evaluation keys that may also change while no epoch has been scored yet (e.g. a mistyped backend that failed
# every trial): no finished trial's value would change meaning.
UNSCORED_KEYS = ("evaluation.",)


def quiet_optuna() -> None:
    """Our own one line per trial replaces Optuna's (its failure warning carries a 75-line traceback)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)


def prepare_run(run_dir: Path, config: Config | None, resume: bool, overrides: Sequence[str] = (),
                backend: TrialBackend | None = None, say: Callable[[str], None] | None = None) -> Config:
    """Create (or reopen for ``resume``) the run directory and its study; returns the run's config. ``backend``'s
    pre-flight check runs before the study is touched; ``say`` hears what a warm start took in."""
    run = RunFolder(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise LoratuneError(f"{run_dir}: not a directory (--run names the run directory)")
    if resume:
        if not run.config.is_file():
            raise LoratuneError(f"{run_dir}: no {CONFIG_FILE}; nothing to resume")
        stored = load_config(run.config)
        storage = open_storage(run_dir, stored.search)
        if not study_exists(storage):
            raise LoratuneError(f"{run_dir}: no study in {stored.search.storage or run.sqlite.name}; nothing to resume")
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        with held(run, stored.search.storage):  # two resumers started together repair the study once
            config = _resume_overrides(run, stored, list(overrides), study.get_trials(deepcopy=False))
            if config is not stored:
                record_config(study, config)
            _check_before_trials(config, backend)
            recover(study, run, config)
        return config
    if config is None:
        raise LoratuneError("optimize: a CONFIG is needed to start a new run")
    sources = read_sources(config) if config.search.warm_start else []  # a bad source is one line, before any model
    _check_before_trials(config, backend)
    run_dir.mkdir(parents=True, exist_ok=True)
    create_or_join(run, config, say, sources)
    return config


def _check_before_trials(config: Config, backend: TrialBackend | None) -> None:
    """Everything that would fail every trial, checked before the first one."""
    check_space(config, config.search.space)
    if not config.train.sample_checkpoints:
        raise LoratuneError("train.sample_checkpoints: must be true for a search (each epoch is scored)")
    if backend is not None:
        check_backend(backend, config)


def _resume_overrides(run: RunFolder, stored: Config, overrides: list[str],
                      trials: Sequence[FrozenTrial]) -> Config:
    """``--resume --set``: settings that do not change what finished trials mean, written back to config.yaml."""
    if not overrides:
        return stored
    scored = any(t.user_attrs.get("composite") is not None for t in trials)
    allowed = RESUMABLE_KEYS + (() if scored else UNSCORED_KEYS)
    data = stored.model_dump(mode="json", exclude_none=True, warnings=False)
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in allowed):
            why = "it would change what the finished trials mean" if not key.startswith("evaluation.") \
                else "epochs have been scored with the stored evaluation settings"
            raise LoratuneError(f"--resume --set {key}: not allowed, {why}; start a new run with --run instead")
        apply_override(data, assignment)
    config = validate_config(data)
    atomic_write_text(run.config, dump_config(config))
    return config


def copy_best(run_dir: Path, config: Config, say: Callable[[str], None] | None = None) -> FrozenTrial | None:
    """RUN/best/: the first candidate of ``search.selection.pick`` under the run folder's ranking inputs (calibrated
    weights, finalists), with its LoRA, samples, scores and params (replaced atomically). The candidate may be a
    pruned trial, or one that failed after scoring: ``best.json`` says which state it ended in."""
    run = RunFolder(run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, config.search))
    trials = study.get_trials(deepcopy=False)
    ranking = read_ranking(run_dir, trials)
    candidates = pick(trials, config.search, ranking)
    if not candidates:
        return None
    best, t = candidates[0], candidates[0].trial
    trial_dir = run.root / t.user_attrs["trial_dir"]
    lora = epoch_lora(trial_dir, best.epoch, t.user_attrs) or trial_dir / t.user_attrs["lora"]
    finalist = best.finalist
    record: dict[str, Any] = {
        "trial": t.number, "state": t.state.name.lower(), "phase": t.user_attrs.get("phase"),
        "composite": best.composite, "values": t.values, "best_epoch": best.epoch, "params": t.params,
        "axes": best.axes, "backends": t.user_attrs.get("backends"), "stand_in": t.user_attrs.get("stand_in"),
        "members": t.user_attrs.get("members"), "fail_reason": t.user_attrs.get("fail_reason"),
        "ranked_by": ("finalist score (search-time and fresh samples together)" if finalist
                      else "search-time score"),
        "weights": ranking.weights_source,
    }
    if finalist is not None:
        record["finalist"] = {"search_composite": finalist.search_composite, "images": finalist.images,
                              "seconds": finalist.seconds, "folder": finalist.folder}
    if ranking.weights is not None:
        record["calibrated"] = {"weights": ranking.weights, "answers": ranking.answers}
    write_best(run, trial_dir, lora, epoch_samples(trial_dir, best.epoch, t.user_attrs), best.epoch, record,
               run.root / finalist.folder if finalist is not None else None)
    if say is not None and ranking.weights is not None:
        own = pick(trials, config.search, Ranking(finalists=ranking.finalists))
        say(f"RUN/best by your taste ({ranking.weights_source}): trial {t.number} epoch {best.epoch}; "
            f"the search's own winner is trial {own[0].number} epoch {own[0].epoch}")
    return t


def write_best(run: RunFolder, trial_dir: Path, lora: Path, samples: Path | None, epoch: int,
               record: dict[str, Any], finalist: Path | None = None) -> None:
    """Replace RUN/best/ atomically with one checkpoint: its LoRA, samples, the trial's params and scores, the
    epoch's full scores, the finalist's fresh samples and scores when it was one, and ``best.json`` (``record`` plus
    the LoRA's name)."""
    with atomic_dir(run.best) as tmp:
        if finalist is not None and finalist.is_dir():
            shutil.copytree(finalist, tmp / "finalist")
        shutil.copy2(lora, tmp / lora.name)
        for name in ("params.json", "scores.json"):
            if (trial_dir / name).is_file():
                shutil.copy2(trial_dir / name, tmp / name)
        if samples is not None:
            shutil.copytree(samples, tmp / "samples")
        epoch_scores = trial_dir / "scores" / f"epoch-{epoch:04d}"
        if epoch_scores.is_dir():
            shutil.copytree(epoch_scores, tmp / "scores")
        atomic_write_json(tmp / "best.json", {**record, "lora": lora.name})


@dataclass(frozen=True)
class Savings:
    """What pruning saved: ``pruned`` trials stopped early, ``saved`` of ``planned`` training epochs not run."""

    pruned: int
    saved: int
    planned: int

    def __str__(self) -> str:
        return f"pruned {self.pruned} trial{'s' * (self.pruned != 1)}, saved {self.saved} of {self.planned} epochs"


def pruning_savings(trials: Sequence[FrozenTrial]) -> Savings:
    pruned = saved = planned = 0
    for t in trials:
        epochs = t.user_attrs.get("epochs_planned")
        if not epochs or not t.state.is_finished():
            continue
        planned += int(epochs)
        if t.state == TrialState.PRUNED and t.intermediate_values:
            pruned += 1
            saved += int(epochs) - max(t.intermediate_values)
    return Savings(pruned, saved, planned)


def report_lost(trials: Sequence[FrozenTrial], say: Callable[[str], None]) -> None:
    """A phase that lost trials to crashes (their retries used up) is said, never silently shrunk."""
    for phase, count in sorted(lost_trials(trials).items()):
        say(f"phase {phase}: {count} trial{'s' * (count != 1)} lost to crashes after every retry (see trials/partial)")


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_optimize(
    config: Config | None,
    run_dir: str | Path,
    resume: bool = False,
    workers: int | None = None,
    backend: str | None = None,
    say: Callable[[str], None] | None = None,
    overrides: Sequence[str] = (),
) -> FrozenTrial | None:
    """Run (or resume) the study in ``run_dir`` with ``workers`` local processes; returns the best candidate.

    ``backend`` is a ``module:factory`` of a ``TrialBackend`` (default: the real trainer and evaluator);
    ``overrides`` are ``--resume --set`` assignments (see ``RESUMABLE_KEYS``).
    """
    run_dir = Path(run_dir).resolve()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    quiet_optuna()
    trial_backend = load_backend(backend)
    config = prepare_run(run_dir, config, resume, overrides, trial_backend, say)
    prepare = getattr(trial_backend, "prepare", None)
    if prepare is not None:  # what the identity scorer learned, said before the first trial
        for line in prepare(config, run_dir):
            say(line)
    n = workers or config.search.workers
    gpus = _gpu_ids() if n > 1 else []
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(1, n):
            cmd = [sys.executable, "-m", "loratune.search.worker", str(run_dir), "--index", str(i)]
            if backend:
                cmd += ["--backend", backend]
            env = dict(os.environ)
            if len(gpus) > 1:  # one worker per GPU; worker 0 (this process) keeps the first
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            children.append(subprocess.Popen(cmd, env=env))
        Worker(run_dir, config, trial_backend, index=0, say=say).run()
        codes = [c.wait() for c in children]
    except BaseException:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait()
        raise
    if any(codes):
        raise LoratuneError(f"{sum(1 for c in codes if c)} worker(s) exited with errors; resume with --resume")
    # Workers on other machines may be finishing too: one at a time, each scoring only the finalists none has yet.
    with held(RunFolder(run_dir), config.search.storage):
        return finish_run(run_dir, config, say, trial_backend)


def finish_run(run_dir: Path, config: Config, say: Callable[[str], None],
               backend: TrialBackend | None = None) -> FrozenTrial | None:
    """After the last trial: set leftovers aside, say what was lost and what pruning saved, score the finalists
    (with ``backend``, which samples), fill RUN/best."""
    storage = open_storage(run_dir, config.search)
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False)
    set_aside_partial_dirs(RunFolder(run_dir), trials)
    report_lost(trials, say)
    savings = pruning_savings(trials)
    if savings.planned:
        say(str(savings))
    copying = [t.number for t in trials if (t.user_attrs.get("constraint") or 0.0) > 0]
    if copying:
        say(f"{len(copying)} trial(s) copy their training images at every epoch (copy rate over "
            f"evaluation.learning.max_copy_rate {config.evaluation.learning.max_copy_rate}): never RUN/best")
    score_finalists(RunFolder(run_dir), config, backend, trials, say)
    spent = time_spent(RunFolder(run_dir), trials)
    if spent:
        say(f"time: {spent}")
    return copy_best(run_dir, config, say)


def time_spent(run: RunFolder, trials: Sequence[FrozenTrial]) -> str | None:
    """Where the study's seconds went (``timing.summary``), finalists included, and what the epoch gate skipped;
    None for a run whose trials recorded no seconds."""
    import json

    from loratune.timing import by_phase, summary

    timed = []
    for t in trials:
        scores = run.root / str(t.user_attrs.get("trial_dir") or "-") / "scores.json"
        if scores.is_file():
            seconds = json.loads(scores.read_text(encoding="utf-8")).get("seconds")
            if isinstance(seconds, dict):
                timed.append((str(t.user_attrs.get("phase")), seconds))
    if not timed:
        return None
    finalists = 0.0
    if run.finalists_file.is_file():
        rows = json.loads(run.finalists_file.read_text(encoding="utf-8")).get("finalists") or []
        finalists = sum(float(r.get("seconds") or 0.0) for r in rows if isinstance(r, dict))
    rows = by_phase(timed, finalists)
    skipped = int(sum(r["epochs"] - r["scored"] for r in rows.values()))
    epochs = int(sum(r["epochs"] for r in rows.values()))
    raced = int(sum(r.get("raced", 0) for r in rows.values()))
    return (summary(rows) + (f"; {skipped} of {epochs} epochs not sampled (search.gating)" if skipped else "")
            + (f"; {raced} scored on their first seeds only (search.gating.race)" if raced else ""))
