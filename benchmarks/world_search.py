"""Which LoRA the search hands back on the known-truth world, measured on the pixel oracle: regret, collapsed picks,
and how the composite agrees with the truth.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py measure [--target lucaboy]   # ~60 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py score [--set KEY=VALUE ...]  # ~4 min
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py agreement
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py compare [--seeds 30] [--trials 8] [--set KEY=VALUE]

``measure`` trains a grid of real LoRAs on the world (``loratune world``'s folder and config; learning rate on a log
grid x rank 4/8, 8 epochs) with loratune's own trainer and keeps, per epoch, the LoRA, its search-time samples
(4 prompts x 4 seeds), four times as many fresh samples (what a finalist gets), the validation and training loss,
the seconds of training, validation and sampling, and the base model's own samples, in
``benchmarks/out/world-grid/<target>/`` (not committed; a rerun resumes).

``score`` scores what ``measure`` kept with the product's evaluator as the world config sets it up (``--set`` switches
a mechanism off: ``evaluation.identity.rate=false``, another quality backend, …), the base model's samples as the
identity negatives: per epoch the composite a study sees, the finalist composite over all 80 samples, and the oracle
on both sample sets; and, per ``--subset K``, the same with only the first K search-time seeds (``search.gating.seeds``),
and the seconds each scoring took. It writes the replay table (``benchmarks/data/world_grid.json`` is the committed
one).
``agreement`` prints how the table's composite agrees with the oracle (Spearman over all epochs, top-10 overlap, where
the collapsed epochs rank, each axis, the validation loss).

``compare`` runs real ``loratune optimize`` studies (SQLite study, phases, pruning, finalists, RUN/best) whose trial
backend replays the table: a trial's learning rate is snapped to the nearest grid value (log scale), its scores and
validation losses are the measured ones, a finalist's score is the measured finalist composite. Studies differ only by
sampler, seed and ``--set`` overrides. Regret = the best oracle score anywhere in the table minus the oracle score of
the (trial, epoch) the study copied to RUN/best, both read on all 80 samples of an epoch; a pick is *collapsed* when
the oracle finds the target in fewer than one sample in four; *scored it*: the study sampled and scored the optimum's
epoch at all (so what it lost there was the pick's, not the search's). Replaying a measured table is what makes 30
seeds per setting affordable; each real world trial takes about four minutes here.

``exact-identity`` and ``oracle-composite`` write diagnostic tables (``--out``) for ``compare`` to replay: the
consistency axis replaced by the oracle's identity rate, or the whole composite by the oracle's score. They say how
much of the regret is the identity scorer's, and how much is left to the search when the scorer is perfect but for
its samples' noise. Never settings: nothing in the product reads the oracle.

``rejections`` says why the oracle finds no character in the samples of the composite's favourite epochs (the
table's top 10 and 20, and all of them): each sample's first failing trait, and how far its shirt's colour is off.
It reads the samples ``measure`` kept (``--store``, ``--target``) and the table that ranks them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

TABLE = Path(__file__).parent / "data" / "world_grid.json"
COSTS = Path(__file__).parent / "data" / "world_costs.json"  # the replay's cost model (world_cost.py costs)
LRS = tuple(float(f"{v:.1e}") for v in np.geomspace(1e-4, 3e-2, 8))  # 1e-4 .. 3e-2, ~2.3x apart
RANKS = (4, 8)
EPOCHS = 8


STORE = Path(__file__).parent / "out" / "world-grid"
FRESH_FACTOR = 4  # fresh samples per search-time sample for the finalists (``search.finalist_samples``' default)


def measure(store: Path, epochs: int, seeds: int, target: str) -> None:
    """Train the grid and keep what scoring needs: every epoch's LoRA, its search-time samples (``seeds`` per prompt),
    ``FRESH_FACTOR`` times as many fresh samples (other seeds, as the finalists get), its validation and training
    loss; and the base model's own samples of the same prompts. Resumes: a finished grid point is kept."""
    import torch

    from loratune.atomic import atomic_write_json
    from loratune.config import load_config
    from loratune.sampling import render_base_samples, sample_loras
    from loratune.train import train
    from loratune.train.cache import BaseCache
    from loratune.train.model import training_precision
    from loratune.world.folder import write_world

    torch.set_num_threads(2)
    store = store / target
    with tempfile.TemporaryDirectory() as tmp:
        world = write_world(Path(tmp) / "world", target=target)
        search_seeds = list(range(seeds))
        fresh_seeds = list(range(seeds, seeds * (1 + FRESH_FACTOR)))
        common = [f"train.epochs={epochs}", f"sampling.seeds={search_seeds}"]
        config = load_config(world.config, common)
        fresh_config = load_config(world.config, [*common, f"sampling.seeds={fresh_seeds}"])
        cache = BaseCache()
        with cache.borrow(config, training_precision(config.train)) as base:
            precision = training_precision(config.train)
            if not (store / "base" / "fresh" / "samples.jsonl").is_file():
                render_base_samples(config, base.models, precision, store / "base" / "search")
                render_base_samples(fresh_config, base.models, precision, store / "base" / "fresh")
        for lr in LRS:
            for rank in RANKS:
                point = store / f"lr{lr:.1e}-r{rank}"
                if (point / "epochs.json").is_file():
                    continue
                start = time.perf_counter()
                overrides = [*common, f"train.learning_rate={lr}", f"train.rank={rank}"]
                run = Path(tmp) / point.name
                losses: list[dict[str, Any]] = []

                def on_checkpoint(info: Any, point: Path = point, losses: list = losses) -> None:
                    folder = point / f"epoch-{info.epoch:04d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(info.kohya_path, folder / "lora.safetensors")
                    shutil.copytree(Path(info.samples[0].path).parent, folder / "search", dirs_exist_ok=True)
                    losses.append({"epoch": info.epoch, "validation_loss": info.validation_loss,
                                   "train_loss": info.train_loss, "seconds": info.seconds, "device": info.device})

                train(load_config(world.config, overrides), run, on_checkpoint=on_checkpoint, cache=cache)
                point_fresh = load_config(world.config, [*overrides, f"sampling.seeds={fresh_seeds}"])
                for epoch in range(1, epochs + 1):
                    folder = point / f"epoch-{epoch:04d}"
                    fresh_started = time.perf_counter()
                    sample_loras(point_fresh, [folder / "lora.safetensors"], folder / "fresh-tmp", cache=cache)
                    losses[epoch - 1]["seconds"]["fresh_sample"] = round(time.perf_counter() - fresh_started, 3)
                    shutil.rmtree(folder / "fresh", ignore_errors=True)
                    (folder / "fresh-tmp" / "lora").rename(folder / "fresh")
                    shutil.rmtree(folder / "fresh-tmp")
                shutil.rmtree(run, ignore_errors=True)
                atomic_write_json(point / "epochs.json", {"learning_rate": lr, "rank": rank, "epochs": losses,
                                                          "search_seeds": search_seeds, "fresh_seeds": fresh_seeds})
                print(f"lr {lr:.1e} rank {rank}: {time.perf_counter() - start:.0f} s", flush=True)


def score(store: Path, table: Path, target: str, overrides: list[str], subsets: tuple[int, ...] = (2,)) -> None:
    """Score what ``measure`` kept with the product's current evaluator (``--set`` to switch a mechanism off): each
    epoch's search-time samples as a study scores them (the base model's samples of the same seeds as the identity
    negatives), and the finalist score on those and the fresh samples together; the oracle on both sets. Writes the
    replay table ``compare`` reads."""
    import torch

    from loratune.atomic import atomic_write_json
    from loratune.config import load_config
    from loratune.evaluation import Evaluator, collect_samples, load_references
    from loratune.scorer_checks import identity_calibration, quality_check
    from loratune.world.folder import write_world

    torch.set_num_threads(2)
    store = store / target
    points = sorted(p for p in store.iterdir() if (p / "epochs.json").is_file())
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = write_world(Path(tmp) / "world", target=target)
        first = json.loads((points[0] / "epochs.json").read_text())
        config = load_config(world.config, [f"sampling.seeds={first['search_seeds']}", *overrides])
        references = load_references(config, negatives_dir=store / "base" / "search")
        evaluator = Evaluator(config, references=references, show_progress=False)
        evaluator.load()
        checks = {"identity": identity_calibration(evaluator), "quality": quality_check(evaluator)}
        for point in points:
            meta = json.loads((point / "epochs.json").read_text())
            for epoch_row in meta["epochs"]:
                folder = point / f"epoch-{epoch_row['epoch']:04d}"
                search = collect_samples(folder / "search", folder / "search" / "samples.jsonl")
                fresh = collect_samples(folder / "fresh", folder / "fresh" / "samples.jsonl")
                at_search, at_finalist = evaluator.score(search), evaluator.score(search + fresh)
                seeds: dict[str, Any] = {}
                for k in subsets:
                    few = [x for x in search if x.seed in first["search_seeds"][:k]]
                    at_few, at_few_finalist = evaluator.score(few), evaluator.score(few + fresh)
                    seeds[str(k)] = {"composite": at_few.composite, "composite_se": at_few.composite_se,
                                     "axes": at_few.normalised, "images": len(few),
                                     "score_seconds": round(at_few.seconds, 3),
                                     "finalist": {"composite": at_few_finalist.composite,
                                                  "axes": at_few_finalist.normalised,
                                                  "images": len(few) + len(fresh),
                                                  "score_seconds": round(at_few_finalist.seconds, 3)}}
                rows.append({
                    "learning_rate": meta["learning_rate"], "rank": meta["rank"], "epoch": epoch_row["epoch"],
                    "composite": at_search.composite, "composite_se": at_search.composite_se,
                    "axes": at_search.normalised,
                    "validation_loss": epoch_row["validation_loss"], "train_loss": epoch_row["train_loss"],
                    "oracle": _judge(search, target).as_dict(),
                    "finalist": {"composite": at_finalist.composite, "axes": at_finalist.normalised,
                                 "images": len(search) + len(fresh),
                                 "score_seconds": round(at_finalist.seconds, 3)},
                    "oracle_all": _judge(search + fresh, target).as_dict(),
                    "images": len(search), "score_seconds": round(at_search.seconds, 3),
                    "seconds": epoch_row.get("seconds"), "device": epoch_row.get("device"), "seeds": seeds,
                })
            print(f"{point.name}: scored ({time.perf_counter() - started:.0f} s)", flush=True)
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(table, {"lrs": list(LRS), "ranks": list(RANKS), "epochs": max(r["epoch"] for r in rows),
                              "seeds": len(first["search_seeds"]), "fresh_seeds": len(first["fresh_seeds"]),
                              "world": f"{target}, loratune.world defaults", "overrides": overrides,
                              "scorer_checks": checks, "rows": rows})


def _judge(samples: list, target: str) -> Any:
    from PIL import Image

    from loratune.world.oracle import judge

    return judge([Image.open(s.path).convert("RGB") for s in samples], [s.prompt for s in samples], target)


class Table:
    """The replay table. ``truth`` is the oracle on all of an epoch's samples (search-time and fresh: 5x as many as
    a study sees) when the table has them, so regret is not measured against the same noise the composite saw."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.lrs = sorted({r["learning_rate"] for r in data["rows"]})
        self.epochs = int(data["epochs"])
        self.rows = {(r["learning_rate"], r["rank"], r["epoch"]): r for r in data["rows"]}
        self.checks = data.get("scorer_checks")
        self.seeds = int(data.get("seeds") or 4)  # search-time seeds per prompt
        self.diagnosis = bool(data.get("diagnosis"))  # exact-identity / oracle-composite: not the world as scored

    def scored_on(self, row: dict[str, Any], seeds: int | None) -> dict[str, Any]:
        """The row's search-time scores on its first ``seeds`` seeds per prompt (``search.gating.seeds``; None:
        all), with its ``finalist`` scores on those and the fresh samples together."""
        if seeds is None or seeds >= self.seeds:
            return row
        if str(seeds) not in (row.get("seeds") or {}):
            raise KeyError(f"the table has no scores on {seeds} seeds per prompt (`score --subset {seeds}`)")
        return row["seeds"][str(seeds)]

    def snap(self, lr: float) -> float:
        return min(self.lrs, key=lambda v: abs(math.log(v / lr)))

    def verdict(self, row: dict[str, Any]) -> dict[str, Any]:
        return row.get("oracle_all") or row["oracle"]

    def truth(self, lr: float, rank: int, epoch: int) -> float:
        return float(self.verdict(self.rows[self.snap(lr), rank, epoch])["score"])

    def identity(self, lr: float, rank: int, epoch: int) -> float:
        return float(self.verdict(self.rows[self.snap(lr), rank, epoch])["identity_rate"] or 0.0)

    def optimum(self) -> float:
        return max(float(self.verdict(r)["score"]) for r in self.rows.values())


class Costs:
    """The replay's cost model (``world_cost.py costs`` fits it): seconds of setup (once per trial), training and
    validation per epoch (by rank), sampling and scoring (a fixed part per call plus a part per image)."""

    def __init__(self, data: dict[str, Any] | None) -> None:
        self.data = data or {}

    @classmethod
    def load(cls) -> Costs:
        path = Path(os.environ.get("LORATUNE_WORLD_COSTS", COSTS))
        return cls(json.loads(path.read_text()) if path.is_file() else None)

    def _line(self, kind: str, images: int) -> float:
        line = self.data.get(kind) or {}
        return float(line.get("fixed", 0.0)) + float(line.get("per_image", 0.0)) * images

    def epoch(self, rank: int, first: bool, images: int | None) -> dict[str, float]:
        """One epoch's seconds; ``images`` None: not sampled (the gate skipped it)."""
        if not self.data:
            return {}
        out = {"train": float(self.data["train"][str(rank)]), "validation": float(self.data["validation"])}
        if first:
            out["setup"] = float(self.data["setup"])
        if images is not None:
            out["sample"], out["score"] = self._line("sample", images), self._line("score", images)
        return out

    def finalist(self, fresh: int, earlier: int) -> float:
        """A finalist's seconds: its fresh samples drawn, then scored with the epoch's search-time ones."""
        return self._line("sample", fresh) + self._line("score", fresh + earlier) if self.data else 0.0


class TableTrials:
    """A trial backend replaying the measured table (``--backend world_search:make``), finalists included; the
    trial's gate (``search.gating``) is asked before each epoch is "sampled", and each epoch's seconds come from the
    cost model (``Costs``)."""

    def __init__(self) -> None:
        self.table = Table(Path(os.environ.get("LORATUNE_WORLD_TABLE", TABLE)))
        self.costs = Costs.load()

    def train(self, config: Any, out_dir: Path, on_epoch: Callable[[Any], None]) -> None:
        import torch
        from safetensors.torch import save_file

        from loratune.records import EpochScore
        from loratune.train import StopTraining

        lr, rank = self.table.snap(config.train.learning_rate), int(config.train.rank)
        wants = getattr(on_epoch, "wants_samples", None)
        images = len(config.sampling.prompts) * len(config.sampling.seeds)
        for epoch in range(1, config.train.epochs + 1):
            row = self.table.rows[lr, rank, epoch]
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            save_file({"m.lora_down.weight": torch.zeros(1, 4)}, str(lora))
            last, loss = epoch == config.train.epochs, row.get("validation_loss")
            if wants is not None and not wants(epoch, loss, last):
                score = EpochScore(epoch, None, lora=lora, validation_loss=loss,
                                   seconds=self.costs.epoch(rank, epoch == 1, None), device="replay")
            else:
                scored = self.table.scored_on(row, config.search.gating.seeds)
                seconds = self.costs.epoch(rank, epoch == 1, images)
                more = getattr(on_epoch, "wants_more", None)
                if more is not None and more(epoch, scored["composite"], scored.get("composite_se")):
                    # search.gating.race: the rest of the seeds drawn, then all of them scored
                    extra = len(config.sampling.prompts) * len(on_epoch.more_seeds)
                    scored = self.table.scored_on(row, None)
                    if seconds:
                        seconds["sample"] += self.costs._line("sample", extra)
                        seconds["score"] += self.costs._line("score", images + extra)
                score = EpochScore(epoch, scored["composite"], scored["axes"], lora, validation_loss=loss,
                                   seconds=seconds, device="replay", composite_se=scored.get("composite_se"))
            try:
                on_epoch(score)
            except StopTraining:
                return

    def score_finalist(self, config: Any, lora: Path, earlier: Path | None, out_dir: Path) -> Any:
        from loratune.records import EpochScore

        train = json.loads((lora.parents[1] / "params.json").read_text())["train"]
        epoch = int(lora.stem.split("-")[-1])
        row = self.table.rows[self.table.snap(train["learning_rate"]), int(train["rank"]), epoch]
        raced = config.search.gating.race is not None  # a raced finalist draws the seeds it skipped: all of them
        scored = self.table.scored_on(row, None if raced else config.search.gating.seeds)
        finalist = scored.get("finalist") or {"composite": scored["composite"], "axes": scored["axes"]}
        return EpochScore(0, finalist["composite"], finalist["axes"], lora)

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        raise RuntimeError("the replayed world has no ensemble (search.phases.ensemble_top_k: 0)")


def make() -> TableTrials:
    return TableTrials()


COLLAPSED = 0.25  # RUN/best draws the target in fewer than 1 sample in 4 (the oracle, on all its samples)


def one_study(root: Path, table: Table, sampler: str, pruner: str, seed: int, trials: int,
              overrides: list[str], name: str | None = None, keep: bool = False) -> dict[str, Any]:
    """Regret on the oracle, whether RUN/best collapsed, and what the study cost (epochs trained and scored, finalist
    epochs re-scored, seconds by kind from the trials' ``scores.json`` and the finalists' from the cost model) for one
    real study over the world's learning-rate x rank space; ``anytime``: the regret and cost had it stopped after each
    trial (``prefix_picks``). ``keep`` leaves the run folder (``root/name``) for a warm start."""
    import optuna

    from loratune.config import load_config
    from loratune.runfolder import STUDY_NAME, RunFolder
    from loratune.search.runner import run_optimize

    run = RunFolder(root / (name or f"{sampler}-{pruner}-{seed}"))
    world_config = Path(os.environ["LORATUNE_WORLD_CONFIG"])
    space = (f"search.space={{learning_rate: {{type: float, low: {min(table.lrs)}, high: {max(table.lrs)}, "
             f"log: true}}, rank: {{type: categorical, choices: {list(RANKS)}}}}}")
    config = load_config(world_config, [f"search.sampler={sampler}", f"search.pruner={pruner}", f"search.seed={seed}",
                                        f"search.n_trials={trials}", "search.phases.ensemble_top_k=0",
                                        "search.phases.refine_trials=0", "search.heartbeat_interval=60",
                                        f"train.epochs={table.epochs}", "train.learning_rate=1e-4", space,
                                        f"sampling.seeds={list(range(table.seeds))}", *overrides])
    run_optimize(config, run.root, backend="world_search:make", say=lambda m: None)
    best = json.loads((run.best / "best.json").read_text())
    params = json.loads((run.trial(best["trial"]) / "params.json").read_text())["train"]
    lr, rank, epoch = params["learning_rate"], int(params["rank"]), int(best["best_epoch"])
    done = sorted(optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None)).get_trials(deepcopy=False),
                  key=lambda t: t.number)
    finalists = json.loads(run.finalists_file.read_text())["finalists"] if run.finalists_file.is_file() else []
    anytime = prefix_picks(run, config, table, done)
    folders = [run.root / t.user_attrs["trial_dir"] for t in done if t.user_attrs.get("trial_dir")]
    scores = [json.loads((f / "scores.json").read_text()) for f in folders]
    trained = [json.loads((f / "params.json").read_text())["train"] for f in folders]
    # exploration: the best truth among the epochs the study scored (what a perfect pick among them would get)
    reached = [table.truth(train["learning_rate"], int(train["rank"]), int(e["epoch"]))
               for train, sc in zip(trained, scores, strict=True)
               for e in sc["epochs"] if not e.get("skipped") and e.get("composite") is not None]
    from anytime import PAID

    seconds = {k: sum(float(sc["seconds"].get(k) or 0.0) for sc in scores) for k in PAID}
    seconds["finalists"] = anytime[-1]["finalist_seconds"]
    if not keep:
        shutil.rmtree(run.root)
    return {"regret": table.optimum() - table.truth(lr, rank, epoch),
            "explore": table.optimum() - max(reached, default=0.0),
            "collapsed": float(table.identity(lr, rank, epoch) < COLLAPSED),
            "epochs": sum(len(sc["epochs"]) for sc in scores),
            "scored": sum(1 for sc in scores for e in sc["epochs"] if not e.get("skipped")),
            "finalists": len(finalists), "seconds": seconds, "cost": sum(seconds.values()),
            "anytime": anytime, "prefix_agrees": anytime[-1]["regret"] == table.optimum() - table.truth(lr, rank, epoch),
            "first_trials": [dict(t.params) for t in done[:3]]}


def prefix_picks(run: Any, config: Any, table: Table, trials: list[Any]) -> list[dict[str, Any]]:
    """``anytime.prefix_picks`` on the replayed world: finalists' scores and the truth from the table, a finalist's
    seconds from the cost model (its fresh samples drawn, then scored with the epoch's search-time ones)."""
    from anytime import prefix_picks as picks

    search = config.search
    fresh = search.finalist_samples * len(config.sampling.seeds) * len(config.sampling.prompts)
    earlier = len(config.sampling.prompts) * (search.gating.seeds or len(config.sampling.seeds))

    def row(trial: Any, epoch: int) -> dict[str, Any]:
        train = json.loads((run.root / trial.user_attrs["trial_dir"] / "params.json").read_text())["train"]
        return table.rows[table.snap(train["learning_rate"]), int(train["rank"]), epoch]

    def finalist(trial: Any, epoch: int) -> tuple[float | None, dict[str, Any]]:
        f = table.scored_on(row(trial, epoch), search.gating.seeds).get("finalist") or {}
        return f.get("composite"), dict(f.get("axes") or {})

    def truth(trial: Any, epoch: int) -> float:
        r = row(trial, epoch)
        return table.truth(r["learning_rate"], r["rank"], epoch)

    return picks(run.root, search, trials, finalist, truth, Costs.load().finalist(fresh, earlier), table.optimum())


def compare(table_path: Path, seeds: int, trials: int, samplers: list[str], pruners: list[str],
            first_seed: int = 0, overrides: list[str] | None = None) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table as RichTable

    from loratune.world.folder import write_world

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).parent))  # the runner imports the backend as world_search:make
    os.environ["LORATUNE_WORLD_TABLE"] = str(table_path)
    table = Table(table_path)
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-world-search-", dir=shm if shm.is_dir() else None))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        world = write_world(root / "world")
        os.environ["LORATUNE_WORLD_CONFIG"] = str(world.config)
        for sampler in samplers:
            for pruner in pruners:
                results[sampler, pruner] = [one_study(root, table, sampler, pruner, seed, trials, overrides or [])
                                            for seed in range(first_seed, first_seed + seeds)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "--json" in sys.argv:
        print(json.dumps({f"{s}+{p}": runs for (s, p), runs in results.items()}))
    out = RichTable(title=f"World: {trials} trials, {seeds} seeds{' ' + ' '.join(overrides) if overrides else ''}; "
                          f"regret on the oracle (optimum {table.optimum():.3f}; {len(table.rows)} measured epochs)")
    for col in ("sampler", "pruner", "median regret", "mean regret", "collapsed", "found optimum", "scored it",
                "epochs", "finalists"):
        out.add_column(col, justify="left" if col in ("sampler", "pruner") else "right")
    for (sampler, pruner), runs in results.items():
        regrets = np.array([r["regret"] for r in runs])
        out.add_row(sampler, pruner, f"{np.median(regrets):.3f}", f"{regrets.mean():.3f}",
                    f"{int(sum(r['collapsed'] for r in runs))}/{len(runs)}",
                    f"{int((regrets <= 1e-9).sum())}/{len(runs)}",
                    f"{sum(r['explore'] <= 1e-9 for r in runs)}/{len(runs)}", f"{np.median([r['epochs'] for r in runs]):.0f}",
                    f"{np.median([r['finalists'] for r in runs]):.0f}")
    Console(width=110).print(out)
    _composite_vs_truth(table)
    overtraining(table)


def agreement(table: Table) -> dict[str, Any]:
    """How the table's scores agree with the oracle: over all epochs (Spearman, top-10 overlap), at the top (where
    the collapsed epochs rank against the good ones), each axis, the finalist scores, the validation loss."""
    from scipy.stats import spearmanr

    rows = list(table.rows.values())
    oracle = [r["oracle"]["score"] for r in rows]
    composite = [r["composite"] for r in rows]
    by_composite = sorted(range(len(rows)), key=lambda i: -composite[i])
    by_oracle = sorted(range(len(rows)), key=lambda i: -oracle[i])
    collapsed = [i for i, r in enumerate(rows) if r["oracle"]["identity_rate"] < COLLAPSED and r["epoch"] > 1
                 and r["learning_rate"] >= 5e-3]
    good = [i for i, r in enumerate(rows) if r["oracle"]["identity_rate"] >= 0.5]
    position = {i: k + 1 for k, i in enumerate(by_composite)}
    out: dict[str, Any] = {
        "spearman": spearmanr(composite, oracle).statistic,
        "top10_overlap": len(set(by_composite[:10]) & set(by_oracle[:10])),
        "best_collapsed_rank": min((position[i] for i in collapsed), default=None),
        "worst_good_rank": max((position[i] for i in good), default=None),
        "collapsed_above_a_good_epoch": sum(1 for c in collapsed for g in good if composite[c] > composite[g]),
        "favourite": {k: rows[by_composite[0]][k] for k in ("learning_rate", "rank", "epoch")}
        | {"oracle": oracle[by_composite[0]]},
        "axes": {a: spearmanr([(r["axes"].get(a) if r["axes"].get(a) is not None else np.nan) for r in rows],
                              oracle, nan_policy="omit").statistic for a in rows[0]["axes"]},
    }
    if all("finalist" in r for r in rows):
        truth = [table.verdict(r)["score"] for r in rows]
        out["finalist_spearman"] = spearmanr([r["finalist"]["composite"] for r in rows], truth).statistic
        out["search_spearman_vs_all"] = spearmanr(composite, truth).statistic
    out["exhaustive_pick"] = exhaustive_pick(table)
    if not table.diagnosis:  # a diagnostic table's composites no longer come from the world's weights
        out["if_identity_were_exact"] = identity_ceiling(table)
    if all(r.get("validation_loss") is not None for r in rows):
        out["validation_spearman"] = spearmanr([-r["validation_loss"] for r in rows], oracle).statistic
        within = []
        for lr in table.lrs:
            for rank in RANKS:
                trial = [r for r in rows if r["learning_rate"] == lr and r["rank"] == rank]
                if len({r["oracle"]["score"] for r in trial}) > 1:
                    within.append(spearmanr([-r["validation_loss"] for r in trial],
                                            [r["oracle"]["score"] for r in trial]).statistic)
        out["validation_spearman_within_trials"] = float(np.nanmedian(within)) if within else None
    return out


def world_weights(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The weights the world's config scores with (its stand-in aesthetic MLP left out), checked against the
    table: every stored composite must come back from its axes."""
    from loratune.config import SEED_WEIGHTS
    from loratune.metrics.composite import composite

    weights = dict(SEED_WEIGHTS, aesthetics=0.0)
    if not np.allclose([composite(r["axes"], weights).value for r in rows], [r["composite"] for r in rows], atol=1e-6):
        raise SystemExit("the table was not scored with the world's weights")
    return weights


def identity_ceiling(table: Table) -> dict[str, Any]:
    """How far the composite would agree with the oracle were its identity scorer exact: the consistency axis
    replaced by the oracle's identity rate, every other axis and weight as scored. A diagnosis, never a setting: it
    says how much of the disagreement is the identity scorer's and how much the composite's other axes'."""
    from scipy.stats import spearmanr

    from loratune.metrics.composite import composite

    rows = list(table.rows.values())
    weights = world_weights(rows)
    exact = [composite(r["axes"] | {"consistency": r["oracle"]["identity_rate"]}, weights).value for r in rows]
    oracle = [r["oracle"]["score"] for r in rows]
    by_exact = sorted(range(len(rows)), key=lambda i: -exact[i])
    by_oracle = sorted(range(len(rows)), key=lambda i: -oracle[i])
    return {"spearman": spearmanr(exact, oracle).statistic,
            "top10_overlap": len(set(by_exact[:10]) & set(by_oracle[:10])),
            "favourite_oracle": oracle[by_exact[0]]}


def exact_identity_table(source: Path, out: Path) -> None:
    """A copy of ``source`` whose consistency axis is the oracle's identity rate (search-time: the oracle on the
    search samples; finalists: on all of them), the composites recomputed with the world's weights. A diagnosis of
    the search, never a setting: replayed by ``compare`` or ``world_cost.py``, it shows what the search and its gates
    would do were the identity scorer exact. The 2-seed subsets are dropped (the oracle was not read on them)."""
    from loratune.atomic import atomic_write_json
    from loratune.metrics.composite import composite

    data = json.loads(source.read_text())
    weights = world_weights(data["rows"])
    for row in data["rows"]:
        row["axes"]["consistency"] = row["oracle"]["identity_rate"]
        row["composite"] = composite(row["axes"], weights).value
        if "finalist" in row:
            row["finalist"]["axes"]["consistency"] = row["oracle_all"]["identity_rate"]
            row["finalist"]["composite"] = composite(row["finalist"]["axes"], weights).value
        row.pop("seeds", None)
    data["overrides"] = [*data.get("overrides", []), "consistency := the oracle's identity rate (a diagnosis)"]
    data["diagnosis"] = True
    atomic_write_json(out, data)


def oracle_composite_table(source: Path, out: Path) -> None:
    """A copy of ``source`` whose composite is the oracle's score itself (search-time: the oracle on the search
    samples; finalists: on all of them), with no standard errors. A diagnosis of the search alone, never a setting:
    replayed by ``compare`` or ``world_cost.py``, it is the regret a search would get were its scorer perfect but
    for the samples' own noise, so what is left is the search's (which runs it trains, where it stops them)."""
    from loratune.atomic import atomic_write_json

    data = json.loads(source.read_text())
    world_weights(data["rows"])  # the same check as exact-identity: the table is the world's as scored
    for row in data["rows"]:
        row["composite"] = row["oracle"]["score"]
        row.pop("composite_se", None)
        if "finalist" in row:
            row["finalist"]["composite"] = row["oracle_all"]["score"]
            row["finalist"].pop("composite_se", None)
        row.pop("seeds", None)
    data["overrides"] = [*data.get("overrides", []), "composite := the oracle's score (a diagnosis)"]
    data["diagnosis"] = True
    atomic_write_json(out, data)


def exhaustive_pick(table: Table, finalists: int = 3, validation_rise: float = 0.10) -> dict[str, Any]:
    """What the product's pick would hand back had every epoch of every grid point been trained and scored: each
    run's best epoch by composite (an epoch whose validation loss rose over ``validation_rise`` is no candidate), the
    top ``finalists`` of those re-ranked on their finalist scores. No search that ends in this composite's pick can
    expect much better: it is the floor of a search's regret, unless the search misses the composite's favourites
    by luck."""
    from loratune.learning.diagnosis import diverged

    candidates = []
    for lr in table.lrs:
        for rank in RANKS:
            run = sorted((r for r in table.rows.values() if r["learning_rate"] == lr and r["rank"] == rank),
                         key=lambda r: r["epoch"])
            losses = [r["validation_loss"] for r in run]
            feasible = [r for i, r in enumerate(run) if diverged(losses[i], losses[:i], validation_rise) is None]
            if feasible:
                candidates.append(max(feasible, key=lambda r: r["composite"]))
    top = sorted(candidates, key=lambda r: -r["composite"])[:finalists]
    pick = max(top, key=lambda r: (r.get("finalist") or r)["composite"])
    truth = float(table.verdict(pick)["score"])
    where = {k: pick[k] for k in ("learning_rate", "rank", "epoch")}
    return where | {"oracle": truth, "regret": table.optimum() - truth}


def _composite_vs_truth(table: Table) -> None:
    stats = agreement(table)
    print(json.dumps(stats, indent=1, default=float))


def overtraining(table: Table, min_lr: float = 5e-3) -> None:
    """For the high learning rates: the oracle per epoch, the epoch the composite picks (per-epoch selection) and
    what stopping at the last epoch would have given instead."""
    from rich.console import Console
    from rich.table import Table as RichTable

    out = RichTable(title=f"Over-training: lr >= {min_lr:g}, oracle score per epoch (* the composite's pick, "
                          "^ the oracle's peak)")
    out.add_column("lr, rank")
    for epoch in range(1, table.epochs + 1):
        out.add_column(str(epoch), justify="right")
    out.add_column("picked / peak / last", justify="right")
    for lr in [v for v in table.lrs if v >= min_lr]:
        for rank in RANKS:
            rows = [table.rows.get((lr, rank, e)) for e in range(1, table.epochs + 1)]
            if any(r is None for r in rows):
                continue
            scores = [r["oracle"]["score"] for r in rows]
            picked = max(range(len(rows)), key=lambda i: rows[i]["composite"])
            peak = max(range(len(rows)), key=lambda i: scores[i])
            cells = [f"{s:.2f}{'*' if i == picked else ''}{'^' if i == peak else ''}" for i, s in enumerate(scores)]
            out.add_row(f"{lr:.1e}, {rank}", *cells, f"{scores[picked]:.2f} / {scores[peak]:.2f} / {scores[-1]:.2f}")
    Console(width=120).print(out)


def rejections(table: Table, store: Path, target: str, tops: tuple[int, ...] = (10, 20)) -> dict[str, Any]:
    """Why the oracle finds no character in the search-time samples of the composite's favourite epochs (its top
    ``tops`` and all of them): each sample's first failing trait (``oracle.rejection``) and how far its shirt's
    colour is off (``oracle.shirt_offset``, RGB; the oracle accepts up to ``TRAIT_TOLERANCE``). Reads the samples
    ``measure`` kept under ``store``."""
    from PIL import Image

    from loratune.evaluation import collect_samples
    from loratune.world import oracle

    rows = sorted(table.rows.values(), key=lambda r: -r["composite"])
    out: dict[str, Any] = {"target": target, "tolerance": oracle.TRAIT_TOLERANCE, "sets": {}}
    for n in (*tops, len(rows)):
        counts = dict.fromkeys(("accepted", *oracle.REJECTIONS), 0)
        offsets: dict[str, list[float]] = {"accepted": [], "rejected": []}
        for row in rows[:n]:
            folder = store / target / f"lr{row['learning_rate']:.1e}-r{row['rank']}" / f"epoch-{row['epoch']:04d}"
            for sample in collect_samples(folder / "search", folder / "search" / "samples.jsonl"):
                image = Image.open(sample.path).convert("RGB")
                reason = oracle.rejection(image, target)
                counts[reason or "accepted"] += 1
                offsets["rejected" if reason else "accepted"].append(oracle.shirt_offset(image, target))
        label = f"top {n}" if n < len(rows) else "all"
        out["sets"][label] = {"samples": sum(counts.values()), **counts,
                              "median_shirt_offset": {k: float(np.median(v)) if v else None
                                                      for k, v in offsets.items()}}
    return out


def _print_rejections(found: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    from loratune.world.oracle import REJECTIONS

    short = dict(zip(REJECTIONS, ("colour", "pieces", "big", "no hair", "hair low"), strict=True))
    out = RichTable(title=f"{found['target']}: why the oracle rejects the samples of the composite's favourites",
                    caption="n: search-time samples; ok: the oracle finds the character; the rest by the first trait "
                            "that fails (shirt colour, shirt in pieces, shirt too big, no hair, hair not above "
                            "shirt); offset: median RGB distance of the shirt's colour in accepted / rejected samples "
                            f"(the oracle allows {found['tolerance']:g})")
    for column in ("epochs", "n", "ok", *short.values(), "offset"):
        out.add_column(column, justify="left" if column == "epochs" else "right")
    for label, s in found["sets"].items():
        median = s["median_shirt_offset"]
        out.add_row(label, str(s["samples"]), str(s["accepted"]), *(str(s[r]) for r in REJECTIONS),
                    "/".join("–" if median[k] is None else f"{median[k]:.0f}" for k in ("accepted", "rejected")))
    Console(width=80).print(out)


def main() -> None:
    from loratune.chatter import quiet_libraries

    quiet_libraries()  # the libraries' notices on import (bitsandbytes' offline kernel lookup) would bury the tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("measure", "score", "compare", "agreement", "exact-identity",
                                             "oracle-composite", "rejections"))
    parser.add_argument("--out", type=Path, help="exact-identity, oracle-composite: where the diagnostic table goes")
    parser.add_argument("--store", type=Path, default=STORE, help="where `measure` keeps LoRAs and samples")
    parser.add_argument("--target", default="lucaboy", help="the world's target character (lucaboy, albertoboy)")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--sample-seeds", type=int, default=4, help="sampling seeds per prompt when measuring")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--samplers", default="tpe,gp,random")
    parser.add_argument("--pruners", default="patient,none")
    parser.add_argument("--json", action="store_true", help="also print every study's regret as JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="`score`: a config override (e.g. evaluation.identity.rate=false)")
    parser.add_argument("--subset", dest="subsets", action="append", type=int, default=[],
                        help="`score`: also score each epoch on its first K search-time seeds (default 2)")
    args = parser.parse_args()
    if args.what == "measure":
        measure(args.store, args.epochs, args.sample_seeds, args.target)
    elif args.what == "score":
        score(args.store, args.table, args.target, args.overrides, tuple(args.subsets or [2]))
    elif args.what == "exact-identity":
        exact_identity_table(args.table, args.out)
    elif args.what == "oracle-composite":
        oracle_composite_table(args.table, args.out)
    elif args.what == "agreement":
        print(json.dumps(agreement(Table(args.table)), indent=1, default=float))
    elif args.what == "rejections":
        found = rejections(Table(args.table), args.store, args.target)
        _print_rejections(found)
        if args.json:
            print(json.dumps(found, indent=1))
    else:
        compare(args.table, args.seeds, args.trials, args.samplers.split(","), args.pruners.split(","),
                args.first_seed, args.overrides)


if __name__ == "__main__":
    main()
