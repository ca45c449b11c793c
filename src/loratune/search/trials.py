"""What one trial does: train with per-epoch scoring (or score a given LoRA), behind a small protocol.

The runner only talks to a ``TrialBackend``: ``train(config, out_dir, on_epoch)`` trains into ``out_dir`` and calls
``on_epoch(EpochScore)`` after each checkpoint is sampled and scored (``on_epoch`` may raise ``StopTraining`` to prune);
``score_lora(config, lora, out_dir)`` samples and scores one LoRA file (the ensemble trial). ``TrainAndScore`` is the
real one: loratune's trainer and one ``Evaluator`` per worker process, so the scoring models load once.

``on_epoch`` is also asked, before an epoch is sampled, whether it should be (``on_epoch.wants_samples(epoch,
validation_loss, last)``: the trial's gate, ``loratune.search.gating``); a backend that asks hands a skipped epoch over
unscored (composite None, its validation loss and seconds kept), one that never asks scores every epoch. Each
``EpochScore`` carries its seconds per kind (``setup`` once, ``train``, ``validation``, ``sample``, ``score``) and the
device, which ``scores.json`` keeps.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loratune.config import Config
from loratune.errors import LoratuneError, first_line
from loratune.records import EpochScore
from loratune.runfolder import RunFolder

if TYPE_CHECKING:
    from loratune.train.cache import BaseCache


class TrialBackend(Protocol):
    def train(self, config: Config, out_dir: Path, on_epoch: Callable[[EpochScore], None]) -> None: ...

    def score_lora(self, config: Config, lora: Path, out_dir: Path) -> EpochScore: ...


def check_backend(backend: Any, config: Config) -> None:
    """Run the backend's own pre-flight ``check(config)`` (models reachable, metric options valid), if it has one:
    whatever would fail every trial is found before the first."""
    check = getattr(backend, "check", None)
    if check is not None:
        check(config)


class TrainAndScore:
    """The real trial: ``loratune.train.train`` with every checkpoint scored by one long-lived ``Evaluator``.

    The base model is kept too (``cache``, a ``loratune.train.cache.BaseCache``): every trial and the ensemble of this
    worker train and draw on the one loaded copy.
    """

    def __init__(self, cache: BaseCache | None = None) -> None:
        from loratune.train.cache import BaseCache

        self._evaluator: Any = None
        self._key: str | None = None
        self._prepared: tuple[str, Path] | None = None
        self.cache = cache if cache is not None else BaseCache()
        self.residency: Any = None  # loratune.residency.policy.Residency, chosen by check()
        self._estimate: list[str] = []  # check()'s memory estimate, not said yet

    def check(self, config: Config) -> None:
        """Every model on this machine (or the hub, online) and every metric backend's options, loading nothing;
        then the device memory estimate (printed) and the residency it leads to, or a stop when nothing fits."""
        from loratune.evaluation import check_evaluation, check_models
        from loratune.residency.policy import preflight

        check_models(config)
        check_evaluation(config)
        self._estimate = []  # said with what ``prepare`` learns, through the caller's console
        self.residency = preflight(config, say=self._estimate.append)

    def evaluator(self, config: Config, run_dir: Path | None = None) -> Any:
        """The worker's evaluator; with ``run_dir``, the run's base-model samples are its identity negatives."""
        from loratune.evaluation import Evaluator, load_references
        from loratune.sampling import BASE_SAMPLES

        negatives = run_dir / BASE_SAMPLES if run_dir is not None else None
        # Trials change only train.*; the evaluator (models, reference embeddings) is shared while these stay equal.
        key = (config.evaluation.model_dump_json(warnings=False) + config.dataset.model_dump_json(warnings=False)
               + str(negatives))
        if self._evaluator is None or key != self._key:
            references = load_references(config, negatives_dir=negatives)
            self._evaluator = Evaluator(config, references=references, show_progress=False)
            self._key = key
        return self._evaluator

    def prepare(self, config: Config, run_dir: Path) -> list[str]:
        """Before a worker's first trial: the base model's own samples (drawn once per run; the report's "no LoRA"
        row and the identity scorer's negatives) and the scorers, loaded with them. Returns what the identity
        scorer learned (its threshold and how well it tells the character from the base model's images) and what the
        quality check found, which also go to ``RUN/scorer-checks.json``."""
        from loratune.atomic import atomic_write_json
        from loratune.sampling import BASE_SAMPLES, render_base_samples
        from loratune.scorer_checks import identity_calibration, identity_lines, quality_check
        from loratune.train.model import training_precision

        key = (config.model_dump_json(exclude={"train", "search"}, warnings=False), run_dir)
        if self._prepared == key:
            return []
        if config.train.sample_checkpoints:
            if self.residency is not None:
                self.residency.enter("sample")
            precision = training_precision(config.train)
            with self.cache.borrow(config, precision) as base:
                render_base_samples(config, base.models, precision, run_dir / BASE_SAMPLES)
        evaluator = self.evaluator(config, run_dir)
        if self.residency is not None:
            self.residency.enter("score")
        evaluator.load()
        calibration, quality = identity_calibration(evaluator), quality_check(evaluator)
        self._prepared = key
        lines, self._estimate = self._estimate, []
        if calibration is not None:
            lines += identity_lines(calibration)
        if quality is not None:
            lines += quality["warnings"]
        if calibration is not None or quality is not None:
            atomic_write_json(RunFolder(run_dir).scorer_checks, {"identity": calibration, "quality": quality})
        return lines

    def _score(self, config: Config, samples: list[Any], epoch: int, lora: Path | None, samples_dir: Path | None,
               out_dir: Path, validation_loss: float | None = None,
               seconds: dict[str, float] | None = None, device: str | None = None) -> EpochScore:
        from loratune.timing import Stopwatch, device_label

        evaluator = self.evaluator(config, RunFolder.of_trial(out_dir).root)
        watch = Stopwatch(evaluator.runtime.device)
        if self.residency is not None:
            self.residency.enter("score")
        result = evaluator.score(samples)
        result.write(out_dir / "scores" / f"epoch-{epoch:04d}")
        watch.lap("score")
        risk = result.copy_risk if result.copy_risk is not None and not result.copy_risk.stand_in else None
        return EpochScore(epoch, result.composite, dict(result.normalised), lora, samples_dir, result.stand_in, result,
                          dict(result.backends_used), copy_rate=risk.rate if risk else None,
                          constraint=risk.constraint if risk else None,
                          cmmd=result.cmmd["value"] if result.cmmd else None, validation_loss=validation_loss,
                          seconds={**(seconds or {}), **watch.take()},
                          device=device or device_label(evaluator.runtime.device), composite_se=result.composite_se)

    def train(self, config: Config, out_dir: Path, on_epoch: Callable[[EpochScore], None]) -> None:
        from loratune.sampling import BASE_SAMPLES
        from loratune.train import CheckpointInfo, train

        run_dir = RunFolder.of_trial(out_dir).root
        started = time.perf_counter()
        self.prepare(config, run_dir)  # kept when done: the base samples and the loaded scorers
        prepared = time.perf_counter() - started  # a worker's first trial: its share of the setup

        def on_checkpoint(info: CheckpointInfo) -> None:
            if "setup" in info.seconds:
                info.seconds["setup"] = round(info.seconds["setup"] + prepared, 3)
            if not info.samples:  # the gate skipped it: its validation loss and seconds still count
                on_epoch(EpochScore(info.epoch, None, lora=info.kohya_path, validation_loss=info.validation_loss,
                                    seconds=info.seconds, device=info.device))
                return
            samples_dir = Path(info.samples[0].path).parent
            score = self._score(config, info.samples, info.epoch, info.kohya_path, samples_dir, out_dir,
                                info.validation_loss, info.seconds, info.device)
            more = getattr(on_epoch, "wants_more", None)
            if info.sample_more is not None and more is not None and more(info.epoch, score.composite,
                                                                           score.composite_se):
                try:
                    score = self._score_more(config, info, score, list(on_epoch.more_seeds), samples_dir, out_dir)
                except Exception as err:  # noqa: BLE001 - the first seeds' score stands; the trial goes on
                    score.raced = f"the rest of the seeds failed: {first_line(err)}"
            on_epoch(score)

        train(config, out_dir, on_checkpoint=on_checkpoint, cache=self.cache, base_samples=run_dir / BASE_SAMPLES,
              residency=self.residency, sample_when=getattr(on_epoch, "wants_samples", None))

    def _score_more(self, config: Config, info: Any, first: EpochScore, seeds: list[int], samples_dir: Path,
                    out_dir: Path) -> EpochScore:
        """An epoch still in the race (``search.gating.race``): the rest of the seeds drawn into its folder, then all
        of its samples scored; its seconds are both draws and both scorings."""
        started = time.perf_counter()
        more = info.sample_more(seeds)
        drawn = time.perf_counter() - started
        score = self._score(config, info.samples + more, info.epoch, info.kohya_path, samples_dir, out_dir,
                            info.validation_loss, dict(info.seconds), info.device)
        score.seconds["sample"] = round(first.seconds.get("sample", 0.0) + drawn, 3)
        score.seconds["score"] = round(first.seconds.get("score", 0.0) + score.seconds.get("score", 0.0), 3)
        return score

    def score_lora(self, config: Config, lora: Path, out_dir: Path) -> EpochScore:
        from loratune.sampling import sample_loras
        from loratune.timing import Stopwatch

        # Drawn as the trials' epochs were (loratune.sampling.render_samples), on the same loaded base.
        watch = Stopwatch(self.residency.device if self.residency is not None else None)
        if self.residency is not None:
            self.residency.enter("sample")
        samples = next(iter(sample_loras(config, [lora], out_dir / "samples", cache=self.cache).values()))
        watch.lap("sample")
        samples_dir = Path(samples[0].path).parent if samples else None
        return self._score(config, samples, 0, lora, samples_dir, out_dir, seconds=watch.take())

    def score_finalist(self, config: Config, lora: Path, earlier: Path | None, out_dir: Path) -> EpochScore:
        """A finalist (``loratune.search.finalists``): ``config``'s fresh seeds drawn into ``out_dir`` and scored
        together with the epoch's search-time samples from ``earlier``."""
        from loratune.evaluation import collect_samples
        from loratune.manifest import SAMPLES_MANIFEST
        from loratune.sampling import sample_loras

        if self.residency is not None:
            self.residency.enter("sample")
        fresh = next(iter(sample_loras(config, [lora], out_dir / "samples", cache=self.cache).values()))
        before = collect_samples(earlier, earlier / SAMPLES_MANIFEST) if earlier is not None else []
        return self._score(config, before + fresh, 0, lora, Path(fresh[0].path).parent, out_dir)


def load_backend(spec: str | None) -> TrialBackend:
    """``None`` = the real trainer; ``"module:attr"`` = a factory returning another backend (tests, custom trainers)."""
    if spec is None:
        return TrainAndScore()
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise LoratuneError(f"trial backend {spec!r}: {err}") from None
    return factory()
