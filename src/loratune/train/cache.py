"""The base model kept loaded between the trials of one process, with the latents and text embeddings that stay valid.

A search trains many LoRAs on one base in one worker. ``BaseCache.borrow`` hands out the loaded parts without any
adapter and takes them back pristine when the trial ends, however it ends (adapters removed, checkpointing off, eval
mode, frozen), so a trial never depends on the one before. One base is kept at a time: asking for another base, device
or precision releases the old one first.

>>> cache = BaseCache()  # doctest: +SKIP
>>> with cache.borrow(config, training_precision(config.train)) as base:  # doctest: +SKIP
...     add_lora(base.models, ...)  # train; the adapter is gone again after the block
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from loratune.train.model import Models, Precision, load_models, place, remove_lora

if TYPE_CHECKING:
    from loratune.config import Config


@dataclass
class Base:
    """A borrowed base: its parts, and the stores that outlive the trial.

    ``latents``: VAE latents by (image file, size, mtime, bucket, flipped) -- the VAE is frozen, so they depend on
    nothing else. ``texts``: text conditioning by final caption, valid while the text encoders are frozen.
    """

    models: Models
    latents: dict[Any, Any] = field(default_factory=dict)
    texts: dict[str, Any] = field(default_factory=dict)


class BaseCache:
    """Loads a base once per (base, family, variant, quantisation, device, precision) and lends it to one trial at a
    time.

    ``loader(base, family, variant, quantize) -> Models`` defaults to ``load_models``.
    """

    def __init__(self, loader: Callable[[str, str, str | None, str | None], Models] = load_models) -> None:
        self.loader = loader
        self._key: tuple[Any, ...] | None = None
        self._base: Base | None = None
        self._lent = False

    @contextmanager
    def borrow(self, config: Config, precision: Precision) -> Iterator[Base]:
        if self._lent:
            raise RuntimeError("BaseCache: the base is already lent (one run at a time per cache)")
        m = config.model
        key = (m.base, m.family, m.variant, m.quantize, m.config, str(precision.device), precision.mixed)
        if self._base is None or self._key != key:
            self._base = self._key = None  # let the old base go before the new one loads
            # model.config only when set (a one-file base's configs): loaders of the four-argument form keep working.
            models = self.loader(m.base, m.family, m.variant, m.quantize, *((m.config,) if m.config else ()))
            place(models, precision)
            self._base, self._key = Base(models), key
        base = self._base
        # The trial's own noise scheduler (``train.prediction_type`` changes its config) and list of trained encoders.
        scheduler = base.models.noise_scheduler
        models = replace(base.models, noise_scheduler=type(scheduler).from_config(scheduler.config),
                         trained_text_encoders=[])
        self._lent = True
        try:
            yield Base(models, base.latents, base.texts)
        finally:
            self._lent = False
            try:
                remove_lora(models)
            except BaseException:
                self._base = self._key = None  # a base that could not be reset is never lent again
                raise
