"""Which trained LoRA is best: the product's one ranking rule, used for RUN/best, the ensemble, refinement and the
benchmarks.

Every trial with at least one scored epoch is a candidate with its best epoch, whatever its state: COMPLETE, PRUNED
(the over-trained run that peaked at epoch 2 and was stopped at epoch 5 is exactly what pruning exists to catch), or
FAIL after scoring (NaN at epoch 6 after a good epoch 4). The runner records the best epoch's scores as user attrs
after every epoch (``composite``, ``axes``, ``best_epoch``, ``lora``), so a candidate's value comes from them, not
from Optuna's ``value``, which a pruned or failed trial does not have.

>>> from optuna.trial import create_trial, TrialState
>>> from loratune.search.config import SearchSection
>>> done = create_trial(value=0.6, user_attrs={"composite": 0.6, "lora": "a.safetensors"})
>>> pruned = create_trial(state=TrialState.PRUNED, user_attrs={"composite": 0.7, "lora": "b.safetensors"})
>>> [t.user_attrs["lora"] for t in ranked([done, pruned], SearchSection())]
['b.safetensors', 'a.safetensors']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from loratune.search.config import SearchSection

# States whose recorded best epoch is final (a RUNNING trial's folder is still being built).
_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def objective_values(search: SearchSection, composite: float | None,
                     axes: dict[str, Any] | None) -> list[float] | None:
    """The study's objective(s) for one scored epoch: the composite, or one value per ``search.directions`` axis.
    None when a needed value is missing (an axis that could not be computed is never 0)."""
    if not search.directions:
        return None if composite is None else [float(composite)]
    values = []
    for axis in search.directions:
        v = composite if axis == "composite" else (axes or {}).get(axis)
        if v is None:
            return None
        values.append(float(v))
    return values


def candidate_values(t: FrozenTrial, search: SearchSection) -> list[float] | None:
    """A trial's best-epoch objective values, or None when it is no candidate (nothing scored, no LoRA kept, a crash
    whose folder went to trials/partial, or even its best epoch over the copy constraint: ``trial.best_epoch`` picks a
    feasible epoch whenever there is one)."""
    if t.state not in _ENDED or not t.user_attrs.get("lora") or _crashed(t):
        return None
    if (t.user_attrs.get("constraint") or 0.0) > 0:  # its best epoch copies: never RUN/best, nor in the ensemble
        return None
    return objective_values(search, t.user_attrs.get("composite"), t.user_attrs.get("axes"))


def _crashed(t: FrozenTrial) -> bool:
    """Its process died or was interrupted mid-trial: the folder its attrs point to was never published (it went to
    ``trials/partial``), and a retry runs the trial again."""
    return t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in (None, "interrupted")


def ranked(trials: Sequence[FrozenTrial], search: SearchSection) -> list[FrozenTrial]:
    """Candidates, best first. Single objective: by best-epoch composite (ties: the earlier trial). Multi-objective:
    the Pareto front first, each group by composite."""
    scored = [(t, v) for t in trials if (v := candidate_values(t, search)) is not None]
    if not search.directions:
        return [t for t, v in sorted(scored, key=lambda tv: (-tv[1][0], tv[0].number))]
    signs = [1.0 if d == "maximize" else -1.0 for d in search.directions.values()]
    points = {t.number: [s * x for s, x in zip(signs, v)] for t, v in scored}
    front = {n for n, p in points.items() if not any(_dominates(q, p) for m, q in points.items() if m != n)}

    def key(tv: tuple[FrozenTrial, list[float]]) -> tuple[bool, float, int]:
        t = tv[0]
        composite = t.user_attrs.get("composite")
        return (t.number not in front, -(composite if composite is not None else -math.inf), t.number)

    return [t for t, _ in sorted(scored, key=key)]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


# --- RUN/best: the pick, with the run's ranking weights and its finalists -----------------------------------------


@dataclass(frozen=True)
class Finalist:
    """A top candidate sampled again with fresh seeds and scored on all of its samples (``RUN/finalists.json``)."""

    trial: int
    epoch: int
    composite: float | None  # on the search-time samples and the fresh ones together
    axes: dict[str, float | None]
    search_composite: float | None  # what the search saw: one noisy maximum among many
    images: int
    seconds: float  # sampling + scoring the fresh samples
    folder: str  # relative to the run folder
    composite_se: float | None = None  # the finalist composite's standard error over its images

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Finalist:
        return cls(int(row["trial"]), int(row["epoch"]), row.get("composite"), dict(row.get("axes") or {}),
                   row.get("search_composite"), int(row.get("images") or 0), float(row.get("seconds") or 0.0),
                   str(row.get("folder") or ""), row.get("composite_se"))


@dataclass(frozen=True)
class Ranking:
    """What ranks a run's candidates for RUN/best besides the trials: the weights (None: the composite each epoch
    was scored with, i.e. the config's ``evaluation.weights``; else the calibrated weights of ``loratune calibrate``),
    the finalists, and every scored epoch's axes per trial (each trial's best epoch under other weights; its
    runners-up for the finalists). ``loratune.runfolder.read_ranking`` reads all of it from the run folder."""

    weights: dict[str, float] | None = None
    weights_source: str = "evaluation.weights"
    finalists: tuple[Finalist, ...] = ()
    epochs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    answers: int = 0  # the calibration's answers, when the weights come from one

    def without_finalists(self) -> Ranking:
        return Ranking(self.weights, self.weights_source, (), self.epochs, self.answers)

    def with_finalists(self, finalists: Sequence[Finalist]) -> Ranking:
        return Ranking(self.weights, self.weights_source, tuple(finalists), self.epochs, self.answers)

    def value(self, axes: dict[str, float | None], recorded: float | None) -> float | None:
        """A composite under these weights: ``recorded`` (what it was scored with) when there are none."""
        from loratune.metrics.composite import composite

        return recorded if self.weights is None else composite(axes, self.weights).value


@dataclass(frozen=True)
class Candidate:
    """One trial's entry in the pick: the epoch and the composite it is ranked by."""

    trial: FrozenTrial
    epoch: int
    composite: float
    axes: dict[str, float | None]
    finalist: Finalist | None = None

    @property
    def number(self) -> int:
        return self.trial.number


def pick(trials: Sequence[FrozenTrial], search: SearchSection, ranking: Ranking | None = None) -> list[Candidate]:
    """Candidates for RUN/best, best first — the rule every caller uses (runner, ``loratune calibrate --apply``,
    report, benchmarks).

    Each candidate trial (``candidate_values``) enters at its best epoch under the ranking's weights. Finalists come
    first, ranked by their composite over the search-time and the fresh samples together; the other candidates follow
    by their search-time composite, a maximum over noisy epochs that the finalists' numbers are not comparable with.
    Multi-objective runs keep the Pareto order of ``ranked`` (no finalists, no weights).

    >>> from optuna.trial import create_trial
    >>> a = create_trial(value=0.7, user_attrs={"composite": 0.7, "lora": "a", "best_epoch": 3, "axes": {}})
    >>> b = create_trial(value=0.6, user_attrs={"composite": 0.6, "lora": "b", "best_epoch": 2, "axes": {}})
    >>> a._number, b._number = 0, 1
    >>> fin = (Finalist(0, 3, 0.50, {}, 0.7, 80, 9.0, "finalists/0000-e0003"),
    ...        Finalist(1, 2, 0.58, {}, 0.6, 80, 9.0, "finalists/0001-e0002"))
    >>> [(c.number, c.epoch, c.composite) for c in pick([a, b], SearchSection(), Ranking(finalists=fin))]
    [(1, 2, 0.58), (0, 3, 0.5)]
    """
    ranking = ranking or Ranking()
    order = ranked(trials, search)
    if search.directions:
        return [Candidate(t, int(t.user_attrs.get("best_epoch") or 0), float(t.user_attrs.get("composite") or 0.0),
                          dict(t.user_attrs.get("axes") or {})) for t in order]

    finalists: dict[int, Candidate] = {}
    for f in ranking.finalists:
        t = next((t for t in order if t.number == f.trial), None)
        v = ranking.value(f.axes, f.composite)
        if t is not None and v is not None and (f.trial not in finalists or v > finalists[f.trial].composite):
            finalists[f.trial] = Candidate(t, f.epoch, v, f.axes, f)
    rest: list[Candidate] = []
    for t in order:
        if t.number in finalists:
            continue
        best = _best_epoch(t, ranking)
        if best is not None:
            rest.append(best)
    head = sorted(finalists.values(), key=lambda c: (-c.composite, c.number, c.epoch))
    return head + sorted(rest, key=lambda c: (-c.composite, c.number, c.epoch))


def _best_epoch(t: FrozenTrial, ranking: Ranking) -> Candidate | None:
    """The trial's best feasible epoch under the ranking's weights (its recorded best epoch under the search's)."""
    attrs = t.user_attrs
    if ranking.weights is None or t.number not in ranking.epochs:
        v = attrs.get("composite")
        return None if v is None else Candidate(t, int(attrs.get("best_epoch") or 0), float(v),
                                                dict(attrs.get("axes") or {}))
    return max(_feasible_epochs(t, ranking), key=lambda c: (c.composite, -c.epoch), default=None)


def _feasible_epochs(t: FrozenTrial, ranking: Ranking) -> list[Candidate]:
    """The trial's scored epochs that may be RUN/best (no constraint broken, not diverged), valued under the
    ranking's weights (``ranking.epochs``; none without it)."""
    out = []
    for row in ranking.epochs.get(t.number, []):
        axes = dict(row.get("axes") or {})
        v = ranking.value(axes, row.get("composite"))
        if v is not None and (row.get("constraint") or 0.0) <= 0 and not row.get("diverged"):
            out.append(Candidate(t, int(row["epoch"]), float(v), axes))
    return out


def finalists_to_score(trials: Sequence[FrozenTrial], search: SearchSection, ranking: Ranking,
                       count: int) -> list[Candidate]:
    """The top ``count`` candidates by search-time scores (under the ranking's weights) that have no finalist score
    yet: each is sampled again with fresh seeds before RUN/best is written."""
    if count <= 0 or search.directions:
        return []
    done = {(f.trial, f.epoch) for f in ranking.finalists}
    candidates = []
    for best in pick(trials, search, ranking.without_finalists()):
        candidates.append(best)
        candidates += _runners_up(best, ranking, search.finalists_per_trial - 1)
    top = sorted(candidates, key=lambda c: (-c.composite, c.number, c.epoch))[:count]
    return [c for c in top if (c.number, c.epoch) not in done]


def _runners_up(best: Candidate, ranking: Ranking, count: int) -> list[Candidate]:
    """The trial's next ``count`` feasible scored epochs after ``best`` under the ranking's weights, each within one
    standard error of its difference from ``best`` when both were measured (``composite_se``): two epochs of one run
    closer than their noise are as worth sampling again as two runs."""
    if count <= 0:
        return []
    se = {r["epoch"]: r.get("composite_se") for r in ranking.epochs.get(best.number, [])}

    def within_noise(c: Candidate) -> bool:  # unmeasured noise: no reason to leave it out
        a, b = se.get(best.epoch), se.get(c.epoch)
        return a is None or b is None or best.composite - c.composite <= math.hypot(a, b)

    others = [c for c in _feasible_epochs(best.trial, ranking) if c.epoch != best.epoch and within_noise(c)]
    return sorted(others, key=lambda c: (-c.composite, c.epoch))[:count]


def read_ranking(run_dir: str | Path, trials: Sequence[FrozenTrial]) -> Ranking:
    """The run folder's ranking inputs: the calibrated weights when ``loratune calibrate --apply`` wrote them
    (``RUN/calibration.json``), the finalists (``RUN/finalists.json``) and every scored epoch whose LoRA file is
    still on disk."""
    import json

    from loratune.runfolder import RunFolder
    from loratune.search.trial import epoch_lora

    run = RunFolder(Path(run_dir))
    weights, source, answers = None, "evaluation.weights", 0
    if run.calibration.is_file():
        data = json.loads(run.calibration.read_text(encoding="utf-8"))
        if isinstance(data.get("weights"), dict):
            weights = {str(k): float(v) for k, v in data["weights"].items()}
            answers = int(data.get("answers") or 0)
            source = f"calibrated weights, {answers} answers"
    finalists: tuple[Finalist, ...] = ()
    if run.finalists_file.is_file():
        rows = json.loads(run.finalists_file.read_text(encoding="utf-8")).get("finalists") or []
        finalists = tuple(Finalist.from_json(r) for r in rows if isinstance(r, dict))
    epochs: dict[int, list[dict[str, Any]]] = {}
    for t in trials:
        folder = run.root / t.user_attrs["trial_dir"] if t.user_attrs.get("trial_dir") else None
        scores = folder / "scores.json" if folder is not None else None
        if scores is None or not scores.is_file():
            continue
        rows = json.loads(scores.read_text(encoding="utf-8")).get("epochs") or []
        epochs[t.number] = [r for r in rows if isinstance(r, dict) and isinstance(r.get("epoch"), int)
                            and epoch_lora(folder, r["epoch"], t.user_attrs) is not None]
    return Ranking(weights, source, finalists, epochs, answers)
