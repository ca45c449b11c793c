"""A calibration session: the run's checkpoints, the answers so far, the weights fitted to them and the pair to ask
next. The page's server and the tests drive the same object; every answer is on disk before ``answer`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loratune.calibrate.candidates import Candidates, Checkpoint, load_candidates
from loratune.calibrate.fit import Comparison, HeldOut, as_dict, composites, fit_weights, held_out_agreement
from loratune.calibrate.pairs import next_pair
from loratune.calibrate.preferences import ANSWERS, Answer, append_answer, now, read_answers
from loratune.errors import LoratuneError
from loratune.runfolder import RunFolder

_OUTCOME = {"left": 1.0, "right": 0.0, "tie": 0.5}


@dataclass
class Ranked:
    trial: int
    epoch: int
    composite: float


def best_per_trial(candidates: Candidates, weights: np.ndarray, need_lora: bool = False) -> list[Ranked]:
    """Each trial's best checkpoint under ``weights``, best first (ties: the earlier trial, the earlier epoch)."""
    c = composites(candidates.scores, weights)
    best: dict[int, Ranked] = {}
    for ckpt, value in zip(candidates.checkpoints, c):
        if np.isnan(value) or (need_lora and ckpt.lora is None):
            continue
        if ckpt.trial not in best or value > best[ckpt.trial].composite:
            best[ckpt.trial] = Ranked(ckpt.trial, ckpt.epoch, float(value))
    return sorted(best.values(), key=lambda r: (-r.composite, r.trial, r.epoch))


def _cells(checkpoint: Checkpoint) -> dict[tuple[str, int | None], int]:
    """(prompt, seed) -> the image's index among the checkpoint's samples."""
    return {(im.prompt, im.seed): k for k, im in enumerate(checkpoint.images)}


class Session:
    def __init__(self, run_dir: str | Path, who: str) -> None:
        self.candidates = load_candidates(run_dir)
        self.path = RunFolder(self.candidates.run.run_dir).preferences
        self.who = who
        # Answers about checkpoints this run no longer has (a trial folder removed) stay in the file, unused.
        self.answers = [a for a in read_answers(self.path) if self._pair(a) is not None]
        self._refit()

    def _pair(self, answer: Answer) -> tuple[int, int] | None:
        i, j = self.candidates.index(answer.left), self.candidates.index(answer.right)
        return None if i is None or j is None else (i, j)

    @property
    def comparisons(self) -> list[Comparison]:
        pairs = [self._pair(a) for a in self.answers]
        return [Comparison(p[0], p[1], _OUTCOME[a.answer]) for p, a in zip(pairs, self.answers) if p is not None]

    def _refit(self) -> None:
        comparisons = self.comparisons
        self.weights = fit_weights(self.candidates.scores, comparisons, self.candidates.prior)
        self.held_out: HeldOut = held_out_agreement(self.candidates.scores, comparisons, self.candidates.prior)
        asked = [(c.left, c.right) for c in comparisons]
        self.pending = next_pair(self.candidates.scores, self.weights, asked, np.random.default_rng(len(asked)))

    def answer(self, left: str, right: str, answer: str) -> None:
        """Record the answer to the pending pair (``left``/``right`` keys guard against a stale page)."""
        if answer not in ANSWERS:
            raise LoratuneError(f"answer: expected one of {', '.join(ANSWERS)} (got {answer!r})")
        if self.pending is None:
            raise LoratuneError("every pair of checkpoints has been answered")
        keys = tuple(self.candidates.checkpoints[i].key for i in self.pending)
        if (left, right) != keys:
            raise LoratuneError(f"pair {left} vs {right}: not the pair being asked ({keys[0]} vs {keys[1]}); reload")
        record = Answer(self.who, now(), left, right, answer)
        append_answer(self.path, record)
        self.answers.append(record)
        self._refit()

    def state(self) -> dict[str, Any]:
        """What the page shows: the pair (as image URLs by prompt and seed), the weights, agreement and the top 5."""
        cands = self.candidates
        pair = None
        if self.pending is not None:
            left, right = (cands.checkpoints[i] for i in self.pending)
            shared = set(_cells(left)) & set(_cells(right))  # same prompts and seeds, side by side
            order = [cell for cell in _cells(left) if cell in shared]
            prompts, seeds = list(dict.fromkeys(p for p, _ in order)), list(dict.fromkeys(s for _, s in order))

            def grid(index: int) -> list[list[str | None]]:
                cells = _cells(cands.checkpoints[index])
                return [[f"/image/{index}/{cells[(p, s)]}" if (p, s) in shared else None for s in seeds]
                        for p in prompts]

            pair = {"left": left.key, "right": right.key, "prompts": prompts, "seeds": seeds,
                    "grids": {"left": grid(self.pending[0]), "right": grid(self.pending[1])}}
        default = best_per_trial(cands, cands.prior)
        default_rank = {r.trial: n for n, r in enumerate(default, 1)}
        top = [{"trial": r.trial, "epoch": r.epoch, "composite": round(r.composite, 4),
                "default_rank": default_rank.get(r.trial)} for r in best_per_trial(cands, self.weights)[:5]]
        held = self.held_out
        return {"answered": len(self.answers), "pair": pair, "axes": list(cands.axes),
                "default_weights": as_dict(cands.axes, cands.prior), "weights": as_dict(cands.axes, self.weights),
                "agreement": {"fitted": held.fitted, "default": held.default, "answers": held.answers},
                "top": top, "checkpoints": len(cands.checkpoints), "file": str(self.path)}

    def image(self, index: int, cell: int) -> Path | None:
        """The file behind ``/image/INDEX/CELL`` (only sample images of this run's checkpoints are served)."""
        if 0 <= index < len(self.candidates.checkpoints) and 0 <= cell < len(self.candidates.checkpoints[index].images):
            return self.candidates.checkpoints[index].images[cell].path
        return None
