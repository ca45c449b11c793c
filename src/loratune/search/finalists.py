"""Finalists: the top candidates sampled again with fresh seeds before RUN/best is written.

A trial's search-time score is the best of its epochs, each scored on a handful of samples: a maximum of noisy numbers,
which the luckiest epoch wins (the winner's curse). So before RUN/best is chosen, the top ``search.finalists``
candidates are sampled again — the same prompts with ``search.finalist_samples`` times as many fresh seeds, the same
seeds for every finalist, so they are compared on equal images — and scored on all of their samples, the search-time
ones and the fresh ones together. ``search.selection.pick`` then ranks the finalists by that score. Ensemble members
and refinement keep using search-time scores: they happen during the search.

``RUN/finalists.json`` lists every finalist scored (trial, epoch, both composites, axes, images, seconds), and
``RUN/finalists/NNNN-eEEEE/`` holds its fresh samples and scores. A resumed run scores only new finalists; changing
``search.finalist_samples`` or ``sampling.seeds`` starts the list afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from loratune.atomic import atomic_dir, atomic_write_json
from loratune.config import Config
from loratune.runfolder import RunFolder
from loratune.sampling import with_seeds
from loratune.search.selection import Finalist, finalists_to_score, read_ranking
from loratune.search.trial import epoch_lora, epoch_samples


def fresh_seeds(config: Config) -> list[int]:
    """``finalist_samples`` x as many seeds as sampling uses, none of them used by the search: the seeds after the
    largest one (prompts that carry a seed of their own count too).

    >>> from loratune.config import validate_config
    >>> fresh_seeds(validate_config({"sampling": {"seeds": [0, 1]}}))
    [2, 3, 4, 5, 6, 7, 8, 9]
    """
    used = list(config.sampling.seeds) + [p.seed for p in config.sampling.prompts if p.seed is not None]
    start = max(used, default=-1) + 1
    return list(range(start, start + config.search.finalist_samples * len(config.sampling.seeds)))


def finalist_config(config: Config) -> Config:
    """The run's config drawing the fresh seeds (a prompt's own seed is dropped: every finalist gets the same set)."""
    prompts = [p.model_copy(update={"seed": None}) for p in config.sampling.prompts]
    sampling = config.sampling.model_copy(update={"seeds": fresh_seeds(config), "prompts": prompts})
    return config.model_copy(update={"sampling": sampling})


def skipped_seeds(config: Config, samples_dir: Path | None) -> list[int]:
    """Under ``search.gating.race``, the search seeds an epoch's folder lacks (it kept its first seeds): its finalist
    draws them with the fresh ones, so that every finalist is scored on the same seeds."""
    from loratune.manifest import SAMPLES_MANIFEST, read_manifest

    if config.search.gating.race is None or samples_dir is None or not (samples_dir / SAMPLES_MANIFEST).is_file():
        return []
    held = {row.seed for row in read_manifest(samples_dir / SAMPLES_MANIFEST).values()}
    return [s for s in config.sampling.seeds if s not in held]


def score_finalists(run_dir: RunFolder, config: Config, backend: Any, trials: Sequence[FrozenTrial],
                    say: Callable[[str], None]) -> list[Finalist]:
    """Score the finalists that have no finalist score yet; returns the new ones. A backend that cannot sample
    (``score_finalist`` missing) or a multi-objective run leaves the pick to the search-time scores, and says so."""
    run = run_dir
    count = config.search.finalists
    if count <= 0:
        return []
    if config.search.directions:
        say("finalists: not used in a multi-objective run (the Pareto front is the pick)")
        return []
    seeds = fresh_seeds(config)
    stored = _read(run)
    if stored.get("seeds") not in (None, seeds):
        say("finalists: sampling seeds changed since the last finalists were scored; scoring them again")
        stored = {}
    kept = [Finalist.from_json(r) for r in stored.get("finalists") or []]
    ranking = read_ranking(run.root, trials)
    ranking = ranking.with_finalists(kept)
    todo = finalists_to_score(trials, config.search, ranking, count)
    if not todo:
        return []
    scorer = getattr(backend, "score_finalist", None)
    if scorer is None:
        say("finalists: not re-scored (this trial backend cannot sample); RUN/best is picked on search-time scores")
        return []
    fresh = finalist_config(config)
    new: list[Finalist] = []
    for candidate in todo:
        t = candidate.trial
        trial_dir = run.root / t.user_attrs["trial_dir"]
        lora = epoch_lora(trial_dir, candidate.epoch, t.user_attrs)
        if lora is None:
            continue
        name = f"{t.number:04d}-e{candidate.epoch:04d}"
        earlier = epoch_samples(trial_dir, candidate.epoch, t.user_attrs)
        missing = skipped_seeds(config, earlier)
        drawn = with_seeds(fresh, [*fresh.sampling.seeds, *missing]) if missing else fresh
        started = time.perf_counter()
        with atomic_dir(run.finalists / name) as tmp:
            score = scorer(drawn, lora, earlier, tmp)
        seconds = time.perf_counter() - started
        images = len(score.result.samples) if score.result is not None else 0
        finalist = Finalist(t.number, candidate.epoch, score.composite, dict(score.normalised), candidate.composite,
                            images, round(seconds, 3), run.relative(run.finalists / name), score.composite_se)
        new.append(finalist)
        kept.append(finalist)
        atomic_write_json(run.finalists_file, {"seeds": seeds, "factor": config.search.finalist_samples,
                                               "per_trial": config.search.finalists_per_trial,
                                               "finalists": [asdict(f) for f in kept]})
        spread = f" ± {score.composite_se:.4f}" if score.composite_se is not None else ""
        say(f"finalist trial {t.number} epoch {candidate.epoch}: composite {_fmt(candidate.composite)} at search "
            f"time, {_fmt(score.composite)}{spread} on {images} samples ({seconds:.0f} s)")
    return new


def _read(run: RunFolder) -> dict[str, Any]:
    import json

    if not run.finalists_file.is_file():
        return {}
    data = json.loads(run.finalists_file.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
