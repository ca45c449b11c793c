"""Cheap signals before expensive ones: which epochs of a trial are sampled and scored.

Sampling and scoring an epoch costs about as much as training it (SD1.5), while the epoch's validation loss
(``loratune.train.validation``) comes almost free with the checkpoint. So a trial asks its ``EpochGate`` before each
epoch is sampled (``search.gating``):

* ``every: k`` samples every k-th epoch: adjacent epochs of one run are close, and the pruner still sees the trend;
* ``skip_diverged`` skips an epoch whose validation loss says it is leaving the data (more than
  ``evaluation.learning.validation_rise`` above the trial's lowest earlier one): such an epoch is no candidate for
  RUN/best whatever it scores, so scoring it only feeds the pruner;
* ``stop_diverged`` is the pruner acting on the cheap signal between scored epochs: a trial is stopped at such an
  epoch (it saves the training as well);
* the trial's last epoch is always sampled, so every trial that runs to the end has a candidate;
* ``seeds: k`` samples a searched epoch with the first k of ``sampling.seeds`` only: fewer samples for the many epochs
  a search looks at, all of them and ``search.finalist_samples`` times as many fresh ones for the few finalists.
* ``race: z`` (with ``seeds: k``) races each epoch against the best so far: scored on its k seeds first, it is
  sampled with the rest of the seeds and scored on all of them unless its composite plus z standard errors stays below
  the best so far: the study's candidates for RUN/best when the trial started, and this trial's feasible epochs. An
  epoch clearly below is unlikely to become RUN/best, so its k-seed score is enough for the pruner and the sampler
  (should it still be a finalist, its finalist draw adds the seeds it skipped); the epochs that could are compared
  on all their samples (racing, as in F-race and irace).

An epoch that is not scored is no candidate for RUN/best (``search.selection``): its composite is None, and
``scores.json`` says why it was skipped.

>>> from loratune.search.config import GatingSection
>>> gate = EpochGate(GatingSection(every=2), last_epoch=5, validation_rise=0.10)
>>> [gate.wants_samples(e, 0.05 - 0.001 * e, e == 5) for e in range(1, 6)]
[False, True, False, True, True]
>>> gate.skipped[1]
'scored every 2 epochs'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loratune.config import Config
from loratune.learning.diagnosis import diverged
from loratune.sampling import with_seeds
from loratune.search.config import GatingSection


@dataclass
class EpochGate:
    """One trial's gate. ``wants_samples`` is asked once per epoch, in order, before the epoch is sampled."""

    gating: GatingSection
    last_epoch: int
    validation_rise: float | None
    losses: list[float | None] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # epoch -> why it was not sampled
    incumbent: float | None = None  # the study's best composite when the trial started (``race``)
    trial_best: float | None = None  # this trial's best composite so far
    raced: dict[int, str] = field(default_factory=dict)  # epoch -> why it kept its first seeds only
    more_seeds: tuple[int, ...] = ()  # the seeds a raced epoch that stays in the race is sampled with next

    def wants_samples(self, epoch: int, validation_loss: float | None, last: bool) -> bool:
        why = self._skip(epoch, validation_loss, last)
        self.losses.append(validation_loss)
        if why is not None:
            self.skipped[epoch] = why
        return why is None

    def _skip(self, epoch: int, validation_loss: float | None, last: bool) -> str | None:
        if last or epoch >= self.last_epoch:
            return None
        if self.gating.skip_diverged or self.gating.stop_diverged:
            rose = diverged(validation_loss, self.losses, self.validation_rise)
            if rose is not None:
                return f"diverged: {rose}"
        k = self.gating.every
        if k > 1 and epoch % k:
            return f"scored every {k} epochs"
        return None

    def wants_more(self, epoch: int, composite: float | None, composite_se: float | None) -> bool:
        """After ``epoch`` was scored on the first ``seeds``: sample the rest of the seeds and score it on all?
        Yes unless ``race`` is set and the composite plus ``race`` standard errors stays below the best so far; yes
        too when there is nothing to race against or no standard error to race with; no when ``seeds`` already
        takes every seed."""
        race = self.gating.race
        if race is None or composite is None or not self.more_seeds:  # no race, or no seeds left to draw
            return False
        known = [v for v in (self.incumbent, self.trial_best) if v is not None]
        if not known or composite_se is None:
            return True
        best = max(known)
        if composite + race * composite_se >= best:
            return True
        k = self.gating.seeds
        self.raced[epoch] = (f"{k} seed{'s' * (k != 1)} only: {composite:.4f} + {race:g} x {composite_se:.4f} "
                             f"is below the best so far ({best:.4f})")
        return False

    def scored(self, composite: float | None) -> None:
        """An epoch's final composite, for the race against this trial's own best."""
        if composite is not None and (self.trial_best is None or composite > self.trial_best):
            self.trial_best = composite

    def stop(self, epoch: int) -> str | None:
        """Why the trial should stop after ``epoch`` on the cheap signal alone (``stop_diverged``), or None."""
        why = self.skipped.get(epoch)
        if self.gating.stop_diverged and why is not None and why.startswith("diverged"):
            return why
        return None


def epoch_config(config: Config) -> Config:
    """The config a searched epoch (or the ensemble) is sampled with: the first ``search.gating.seeds`` of
    ``sampling.seeds`` when set, else ``config`` itself.

    >>> from loratune.config import validate_config
    >>> epoch_config(validate_config({"sampling": {"seeds": [0, 1, 2, 3]}, "search": {"gating": {"seeds": 2}}})
    ...              ).sampling.seeds
    [0, 1]
    """
    k = config.search.gating.seeds
    if k is None or k >= len(config.sampling.seeds):
        return config
    return with_seeds(config, config.sampling.seeds[:k])


def more_seeds(config: Config) -> tuple[int, ...]:
    """The seeds of ``sampling.seeds`` after the first ``search.gating.seeds``: what an epoch still in the race
    (``search.gating.race``) is sampled with next; none without a race.

    >>> from loratune.config import validate_config
    >>> more_seeds(validate_config({"sampling": {"seeds": [0, 1, 2, 3]}, "search": {"gating": {"seeds": 2, "race": 2}}}))
    (2, 3)
    """
    k = config.search.gating.seeds
    if config.search.gating.race is None or k is None:
        return ()
    return tuple(config.sampling.seeds[k:])
