"""Which sampler finds the truly best LoRA on the known-truth world, at equal budget: regret on the pixel oracle.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py measure   # ~25 min on 2 cores: real trainings
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_search.py compare [--seeds 10] [--trials 8]

``measure`` trains a grid of real LoRAs on the world (``loratune world``'s folder and config; learning rate on a log
grid x rank 4/8, 8 epochs, every epoch sampled: 4 prompts x 4 seeds) with loratune's own trainer, and records per epoch the composite and axes that
``loratune.evaluation.Evaluator`` gives (what a study ranks by) and the oracle's verdict on the same samples (what is
true). The table is written to ``benchmarks/data/world_grid.json`` after every grid point (a rerun resumes).

``compare`` runs real ``loratune optimize`` studies (SQLite study, phases, pruning, RUN/best) whose trial backend
replays that table: a trial's learning rate is snapped to the nearest grid value (log scale), its scores are the
measured ones. Studies differ only by sampler and seed. Regret = the best oracle score anywhere in the table minus the
oracle score of the (trial, epoch) the study copied to RUN/best — so where the composite disagrees with the truth, a
sampler is misled exactly as it would be in a real run. Replaying a measured table is what makes >= 10 seeds per
sampler affordable; each real world trial takes about a minute here.
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
                                   "train_loss": info.train_loss})

                train(load_config(world.config, overrides), run, on_checkpoint=on_checkpoint, cache=cache)
                point_fresh = load_config(world.config, [*overrides, f"sampling.seeds={fresh_seeds}"])
                for epoch in range(1, epochs + 1):
                    folder = point / f"epoch-{epoch:04d}"
                    sample_loras(point_fresh, [folder / "lora.safetensors"], folder / "fresh-tmp", cache=cache)
                    shutil.rmtree(folder / "fresh", ignore_errors=True)
                    (folder / "fresh-tmp" / "lora").rename(folder / "fresh")
                    shutil.rmtree(folder / "fresh-tmp")
                shutil.rmtree(run, ignore_errors=True)
                atomic_write_json(point / "epochs.json", {"learning_rate": lr, "rank": rank, "epochs": losses,
                                                          "search_seeds": search_seeds, "fresh_seeds": fresh_seeds})
                print(f"lr {lr:.1e} rank {rank}: {time.perf_counter() - start:.0f} s", flush=True)


def _judge(samples: list, target: str) -> Any:
    from PIL import Image

    from loratune.world.oracle import judge

    return judge([Image.open(s.path).convert("RGB") for s in samples], [s.prompt for s in samples], target)


class Table:
    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.lrs = sorted({r["learning_rate"] for r in data["rows"]})
        self.epochs = int(data["epochs"])
        self.rows = {(r["learning_rate"], r["rank"], r["epoch"]): r for r in data["rows"]}

    def snap(self, lr: float) -> float:
        return min(self.lrs, key=lambda v: abs(math.log(v / lr)))

    def truth(self, lr: float, rank: int, epoch: int) -> float:
        return float(self.rows[self.snap(lr), rank, epoch]["oracle"]["score"])

    def optimum(self) -> float:
        return max(float(r["oracle"]["score"]) for r in self.rows.values())


class TableTrials:
    """A trial backend replaying the measured table (``--backend world_search:make``)."""

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
                on_epoch(EpochScore(epoch, row["composite"], row["axes"], lora))
            except StopTraining:
                return

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        raise RuntimeError("the replayed world has no ensemble (search.phases.ensemble_top_k: 0)")


def make() -> TableTrials:
    return TableTrials()


def one_study(root: Path, table: Table, sampler: str, pruner: str, seed: int, trials: int) -> tuple[float, int]:
    """(regret on the oracle, epochs trained) of one real study over the world's learning-rate x rank space."""
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
                                        f"train.epochs={table.epochs}", "train.learning_rate=1e-4", space])
    run_optimize(config, run.root, backend="world_search:make", say=lambda m: None)
    best = json.loads((run.best / "best.json").read_text())
    params = json.loads((run.trial(best["trial"]) / "params.json").read_text())["train"]
    value = table.truth(params["learning_rate"], int(params["rank"]), int(best["best_epoch"]))
    study = optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None))
    epochs = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    shutil.rmtree(run.root)
    return table.optimum() - value, epochs


def compare(table_path: Path, seeds: int, trials: int, samplers: list[str], pruners: list[str],
            first_seed: int = 0) -> None:
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
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    try:
        world = write_world(root / "world")
        os.environ["LORATUNE_WORLD_CONFIG"] = str(world.config)
        for sampler in samplers:
            for pruner in pruners:
                results[sampler, pruner] = [one_study(root, table, sampler, pruner, seed, trials)
                                            for seed in range(first_seed, first_seed + seeds)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if "--json" in sys.argv:
        print(json.dumps({f"{s}+{p}": [r for r, _ in runs] for (s, p), runs in results.items()}))
    reference = float(np.median([r for r, _ in results.get(("random", "none"), [])] or [np.nan]))
    out = RichTable(title=f"World: {trials} trials, {seeds} seeds, regret on the oracle (optimum "
                          f"{table.optimum():.3f}; {len(table.rows)} measured epochs)")
    for col in ("sampler", "pruner", "median regret", "mean regret", "vs random", "found optimum", "epochs trained"):
        out.add_column(col, justify="left" if col in ("sampler", "pruner") else "right")
    for (sampler, pruner), runs in results.items():
        regrets = np.array([r for r, _ in runs])
        out.add_row(sampler, pruner, f"{np.median(regrets):.3f}", f"{regrets.mean():.3f}",
                    f"{np.median(regrets) / reference:.2f}x" if reference > 0 else "—",
                    f"{int((regrets <= 1e-9).sum())}/{len(runs)}", f"{np.median([e for _, e in runs]):.0f}")
    Console(width=100).print(out)
    _composite_vs_truth(table)
    overtraining(table)


def _composite_vs_truth(table: Table) -> None:
    from scipy.stats import spearmanr

    rows = list(table.rows.values())
    rho = spearmanr([r["composite"] for r in rows], [r["oracle"]["score"] for r in rows]).statistic
    top = max(rows, key=lambda r: r["composite"])
    print(f"composite vs oracle score over the table: Spearman {rho:.3f}; the composite's favourite (lr "
          f"{top['learning_rate']:.1e}, rank {top['rank']}, epoch {top['epoch']}) has oracle score "
          f"{top['oracle']['score']:.3f} of {table.optimum():.3f}")


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
    parser.add_argument("what", choices=("measure", "score", "compare"))
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
    args = parser.parse_args()
    if args.what == "measure":
        measure(args.store, args.epochs, args.sample_seeds, args.target)
    else:
        compare(args.table, args.seeds, args.trials, args.samplers.split(","), args.pruners.split(","),
                args.first_seed)


if __name__ == "__main__":
    main()
