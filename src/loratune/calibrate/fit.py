"""Learning composite weights from "which is better?" answers: a Bradley–Terry (logistic) fit over the per-axis
normalised scores, regularised toward the current weights (plain math over arrays).

The user prefers checkpoint L over R with probability ``sigmoid(BETA * (c_L(w) - c_R(w)))``, where ``c(w)`` is the
composite (the weighted mean of the normalised axes, a missing axis left out and the weights renormalised, as
``loratune.metrics.composite`` computes it). The weights are ``w = mass * softmax(theta)`` over the axes that can move
(non-negative, summing to 1 with the fixed ones), and the fit minimises the answers' negative log-likelihood plus
``PRIOR_STRENGTH / 2 * |w - w0|^2``: the current weights ``w0`` are a prior that answers have to outweigh.

``PRIOR_STRENGTH`` sets how far answers move the weights. Measured with a consistent simulated user on 36 checkpoints
with random axis profiles, pairs chosen by ``loratune.calibrate.pairs`` (``tests/test_calibrate.py`` checks it): 10
answers go about a sixth of the way from the current weights to the user's taste, 30 answers about 40% (cosine to the
taste from 0.73 to 0.92-0.95 for identity 0.7 / alignment 0.3), 40 answers about half, while 30 random answers move
no axis by more than about 0.1. Weaker priors (60) let random answers move an axis by 0.2; stronger ones (400) need
over 100 answers to learn a taste. A "can't tell" counts as half a win each way, which pulls the two composites
together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

# Composite difference -> log-odds: a difference of 0.1 is a 73% preference, 0.3 a 95% one.
BETA = 10.0
# The prior's pull on |w - w0|^2 (see the module docstring for what it means in answers).
PRIOR_STRENGTH = 150.0
FOLDS = 5


@dataclass(frozen=True)
class Comparison:
    """One answer as indices into the score matrix: ``outcome`` 1 = left better, 0 = right better, 0.5 = can't tell."""

    left: int
    right: int
    outcome: float


def composites(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Composite per row of ``scores`` (rows: checkpoints, columns: axes, NaN = missing); NaN where no weighted axis
    was computed.

    >>> composites(np.array([[1.0, np.nan], [0.0, 0.5]]), np.array([0.3, 0.1])).round(3).tolist()
    [1.0, 0.125]
    """
    present = ~np.isnan(scores)
    total = present @ weights
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.where(present, scores, 0.0) @ weights / np.where(total > 0, total, 1.0), np.nan)


def _split(prior: np.ndarray, movable: np.ndarray) -> tuple[float, np.ndarray]:
    mass = float(prior[movable].sum())
    return mass, np.log(prior[movable] / mass)


def _weights(theta: np.ndarray, prior: np.ndarray, movable: np.ndarray, mass: float) -> np.ndarray:
    w = prior.copy()
    e = np.exp(theta - theta.max())
    w[movable] = mass * e / e.sum()
    return w


def fit_weights(scores: np.ndarray, answers: Sequence[Comparison], prior: np.ndarray,
                strength: float = PRIOR_STRENGTH, beta: float = BETA) -> np.ndarray:
    """The weights that best explain ``answers``, pulled toward ``prior`` (normalised to sum 1 first). Axes with
    prior weight 0, or never computed for any checkpoint, keep their prior weight.

    >>> s = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> w = fit_weights(s, [Comparison(0, 1, 1.0)] * 40, np.array([0.5, 0.5]))
    >>> bool(w[0] > 0.6 and abs(w.sum() - 1) < 1e-9)
    True
    """
    prior = np.asarray(prior, dtype=float) / float(np.sum(prior))
    movable = (prior > 0) & ~np.all(np.isnan(scores), axis=0)
    if movable.sum() < 2 or not answers:
        return prior
    mass, theta0 = _split(prior, movable)
    left = np.array([a.left for a in answers])
    right = np.array([a.right for a in answers])
    y = np.array([a.outcome for a in answers], dtype=float)

    def loss(theta: np.ndarray) -> float:
        w = _weights(theta, prior, movable, mass)
        c = composites(scores, w)
        z = beta * (c[left] - c[right])
        nll = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z))
        return float(nll + strength / 2 * np.sum((w - prior) ** 2))

    result = minimize(loss, theta0, method="L-BFGS-B")
    return _weights(result.x, prior, movable, mass)


def agreement(scores: np.ndarray, answers: Sequence[Comparison], weights: np.ndarray) -> float | None:
    """The share of decisive answers (not "can't tell") that ``weights`` rank the same way; a tie scores half."""
    decisive = [a for a in answers if a.outcome != 0.5]
    if not decisive:
        return None
    c = composites(scores, weights)
    diff = np.array([c[a.left] - c[a.right] for a in decisive])
    said = np.array([1.0 if a.outcome == 1.0 else -1.0 for a in decisive])
    return float(np.mean(np.where(diff == 0, 0.5, np.sign(diff) == said)))


@dataclass(frozen=True)
class HeldOut:
    """Agreement with the user's answers that each fit had not seen (``FOLDS``-fold), fitted vs the prior weights."""

    fitted: float | None
    default: float | None
    answers: int


def held_out_agreement(scores: np.ndarray, answers: Sequence[Comparison], prior: np.ndarray,
                       strength: float = PRIOR_STRENGTH) -> HeldOut:
    """Each decisive answer is predicted by weights fitted on the other folds; the prior needs no fit."""
    decisive = [i for i, a in enumerate(answers) if a.outcome != 0.5]
    if len(decisive) < FOLDS:
        return HeldOut(None, None, len(decisive))
    hits = []
    for fold in range(FOLDS):
        held = {i for k, i in enumerate(decisive) if k % FOLDS == fold}
        w = fit_weights(scores, [a for i, a in enumerate(answers) if i not in held], prior, strength)
        hits += [agreement(scores, [answers[i]], w) for i in sorted(held)]
    default = agreement(scores, [answers[i] for i in decisive], np.asarray(prior, dtype=float))
    return HeldOut(float(np.mean(hits)), default, len(decisive))


def as_dict(axes: Sequence[str], weights: np.ndarray, digits: int = 4) -> dict[str, float]:
    return {a: round(float(w), digits) for a, w in zip(axes, weights)}


def as_array(axes: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    return np.array([float(weights.get(a, 0.0)) for a in axes])
