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
from loratune.search.config import GatingSection


@dataclass
class EpochGate:
    """One trial's gate. ``wants_samples`` is asked once per epoch, in order, before the epoch is sampled."""

    gating: GatingSection
    last_epoch: int
    validation_rise: float | None
    losses: list[float | None] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # epoch -> why it was not sampled

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
    sampling = config.sampling.model_copy(update={"seeds": list(config.sampling.seeds[:k])})
    return config.model_copy(update={"sampling": sampling})
