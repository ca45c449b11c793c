"""Which LoRA the search hands back on the known-truth world, measured on the pixel oracle: regret, collapsed picks,
and how the composite agrees with the truth.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py measure [--target lucaboy]   # ~60 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py score [--set KEY=VALUE ...]  # ~4 min
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py agreement
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py compare [--seeds 30] [--trials 8] [--set KEY=VALUE]

``measure`` trains a grid of real LoRAs on the world (``loratune world``'s folder and config; learning rate on a log
grid x rank 4/8, 8 epochs) with loratune's own trainer and keeps, per epoch, the LoRA, its search-time samples
(4 prompts x 4 seeds), four times as many fresh samples (what a finalist gets), the validation and training loss,
and the base model's own samples, in ``benchmarks/out/world-grid/<target>/`` (not committed; a rerun resumes).

``score`` scores what ``measure`` kept with the product's evaluator as the world config sets it up (``--set`` switches
a mechanism off: ``evaluation.identity.rate=false``, another quality backend, …), the base model's samples as the
identity negatives: per epoch the composite a study sees, the finalist composite over all 80 samples, and the oracle
on both sample sets. It writes the replay table (``benchmarks/data/world_grid.json`` is the committed one).
``agreement`` prints how the table's composite agrees with the oracle (Spearman over all epochs, top-10 overlap, where
the collapsed epochs rank, each axis, the validation loss).

``compare`` runs real ``loratune optimize`` studies (SQLite study, phases, pruning, finalists, RUN/best) whose trial
backend replays the table: a trial's learning rate is snapped to the nearest grid value (log scale), its scores and
validation losses are the measured ones, a finalist's score is the measured finalist composite. Studies differ only by
sampler, seed and ``--set`` overrides. Regret = the best oracle score anywhere in the table minus the oracle score of
the (trial, epoch) the study copied to RUN/best, both read on all 80 samples of an epoch; a pick is *collapsed* when
the oracle finds the target in fewer than one sample in four. Replaying a measured table is what makes 30 seeds per
setting affordable; each real world trial takes about four minutes here.
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

import numpy as np  # noqa: E402

TABLE = Path(__file__).parent / "data" / "world_grid.json"
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


def score(store: Path, table: Path, target: str, overrides: list[str]) -> None:
    """Score what ``measure`` kept with the product's current evaluator (``--set`` to switch a mechanism off): each
    epoch's search-time samples as a study scores them (the base model's samples of the same seeds as the identity
    negatives), and the finalist score on those and the fresh samples together; the oracle on both sets. Writes the
    replay table ``compare`` reads."""
    import torch

    from loratune.atomic import atomic_write_json
    from loratune.config import load_config
    from loratune.evaluation import Evaluator, collect_samples, identity_calibration, load_references, quality_check
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
                rows.append({
                    "learning_rate": meta["learning_rate"], "rank": meta["rank"], "epoch": epoch_row["epoch"],
                    "composite": at_search.composite, "axes": at_search.normalised,
                    "validation_loss": epoch_row["validation_loss"], "train_loss": epoch_row["train_loss"],
                    "oracle": _judge(search, target).as_dict(),
                    "finalist": {"composite": at_finalist.composite, "axes": at_finalist.normalised,
                                 "images": len(search) + len(fresh)},
                    "oracle_all": _judge(search + fresh, target).as_dict(),
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


class TableTrials:
    """A trial backend replaying the measured table (``--backend world_search:make``), finalists included."""

    def __init__(self) -> None:
        self.table = Table(Path(os.environ.get("LORATUNE_WORLD_TABLE", TABLE)))

    def train(self, config: Any, out_dir: Path, on_epoch: Callable[[Any], None]) -> None:
        import torch
        from safetensors.torch import save_file

        from loratune.records import EpochScore
        from loratune.train import StopTraining

        lr, rank = self.table.snap(config.train.learning_rate), int(config.train.rank)
        for epoch in range(1, config.train.epochs + 1):
            row = self.table.rows[lr, rank, epoch]
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            save_file({"m.lora_down.weight": torch.zeros(1, 4)}, str(lora))
            try:
                on_epoch(EpochScore(epoch, row["composite"], row["axes"], lora,
                                    validation_loss=row.get("validation_loss")))
            except StopTraining:
                return

    def score_finalist(self, config: Any, lora: Path, earlier: Path | None, out_dir: Path) -> Any:
        from loratune.records import EpochScore

        train = json.loads((lora.parents[1] / "params.json").read_text())["train"]
        epoch = int(lora.stem.split("-")[-1])
        row = self.table.rows[self.table.snap(train["learning_rate"]), int(train["rank"]), epoch]
        finalist = row.get("finalist") or {"composite": row["composite"], "axes": row["axes"]}
        return EpochScore(0, finalist["composite"], finalist["axes"], lora)

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        raise RuntimeError("the replayed world has no ensemble (search.phases.ensemble_top_k: 0)")


def make() -> TableTrials:
    return TableTrials()


COLLAPSED = 0.25  # RUN/best draws the target in fewer than 1 sample in 4 (the oracle, on all its samples)


def one_study(root: Path, table: Table, sampler: str, pruner: str, seed: int, trials: int,
              overrides: list[str]) -> dict[str, float]:
    """Regret on the oracle, whether RUN/best collapsed, and what the study cost (epochs trained and scored,
    finalist epochs re-scored) for one real study over the world's learning-rate x rank space."""
    import optuna

    from loratune.config import load_config
    from loratune.runfolder import STUDY_NAME, RunFolder
    from loratune.search.runner import run_optimize

    run = RunFolder(root / f"{sampler}-{pruner}-{seed}")
    world_config = Path(os.environ["LORATUNE_WORLD_CONFIG"])
    space = (f"search.space={{learning_rate: {{type: float, low: {min(table.lrs)}, high: {max(table.lrs)}, "
             f"log: true}}, rank: {{type: categorical, choices: {list(RANKS)}}}}}")
    config = load_config(world_config, [f"search.sampler={sampler}", f"search.pruner={pruner}", f"search.seed={seed}",
                                        f"search.n_trials={trials}", "search.phases.ensemble_top_k=0",
                                        "search.phases.refine_trials=0", "search.heartbeat_interval=60",
                                        f"train.epochs={table.epochs}", "train.learning_rate=1e-4", space,
                                        *overrides])
    run_optimize(config, run.root, backend="world_search:make", say=lambda m: None)
    best = json.loads((run.best / "best.json").read_text())
    params = json.loads((run.trial(best["trial"]) / "params.json").read_text())["train"]
    lr, rank, epoch = params["learning_rate"], int(params["rank"]), int(best["best_epoch"])
    study = optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None))
    epochs = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    finalists = json.loads(run.finalists_file.read_text())["finalists"] if run.finalists_file.is_file() else []
    shutil.rmtree(run.root)
    return {"regret": table.optimum() - table.truth(lr, rank, epoch),
            "collapsed": float(table.identity(lr, rank, epoch) < COLLAPSED), "epochs": epochs,
            "finalists": len(finalists)}


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
    for col in ("sampler", "pruner", "median regret", "mean regret", "collapsed", "found optimum", "epochs",
                "finalists"):
        out.add_column(col, justify="left" if col in ("sampler", "pruner") else "right")
    for (sampler, pruner), runs in results.items():
        regrets = np.array([r["regret"] for r in runs])
        out.add_row(sampler, pruner, f"{np.median(regrets):.3f}", f"{regrets.mean():.3f}",
                    f"{int(sum(r['collapsed'] for r in runs))}/{len(runs)}",
                    f"{int((regrets <= 1e-9).sum())}/{len(runs)}", f"{np.median([r['epochs'] for r in runs]):.0f}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("measure", "score", "compare", "agreement"))
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
    args = parser.parse_args()
    if args.what == "measure":
        measure(args.store, args.epochs, args.sample_seeds, args.target)
    elif args.what == "score":
        score(args.store, args.table, args.target, args.overrides)
    elif args.what == "agreement":
        print(json.dumps(agreement(Table(args.table)), indent=1, default=float))
    else:
        compare(args.table, args.seeds, args.trials, args.samplers.split(","), args.pruners.split(","),
                args.first_seed, args.overrides)


if __name__ == "__main__":
    main()
