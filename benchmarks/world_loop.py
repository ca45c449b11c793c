"""The world's evidence, measured: the oracle's verdict beside the product's scores, per epoch, and how they rank-agree.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_loop.py [--epochs 4] [--set train.learning_rate=1e-3 ...]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_loop.py --trials 12     # + a real search study on the world

Writes the world into a temporary folder (``loratune.world.write_world``), samples the base model with the config's
prompts and seeds (epoch 0), trains a LoRA of the target with loratune's own trainer (the known-good recipe: rank 8,
lr 1e-3, 4 epochs of 50 steps) and prints per epoch: the oracle's identity rate (target present with shirt, hair above
it), mean trait share, scene accuracy, quality and diversity, beside the composite and the normalised axes from
``loratune.evaluation.Evaluator`` on the same samples. Then the Spearman rank correlation of the composite (and of each
axis) with the oracle across those epochs. With ``--trials N`` it also runs ``loratune.search.runner.run_optimize`` on
the world config (learning rate 3e-4..3e-3 log, rank 4/8/16) and correlates the composite each epoch got during the
study with the oracle's verdict on that epoch's samples, across all epochs of all trials.
Each LoRA epoch also gets its copy rate (share of samples above ``evaluation.learning.copy_threshold`` of a training
image) and the product's per-epoch diagnosis. TPE/GP/random regret on the oracle: ``benchmarks/world_search.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ORACLE = ("identity_rate", "identity_mean", "scene_accuracy", "quality", "diversity")
# Which oracle reading each product axis is meant to track.
AXIS_ORACLE = {
    "alignment": "scene_accuracy",
    "consistency": "identity_rate",
    "quality": "quality",
    "diversity": "diversity",
    "aesthetics": "quality",
}
STUDY_SPACE = (
    "search.space={learning_rate: {type: float, low: 0.0003, high: 0.003, log: true},"
    " rank: {type: categorical, choices: [4, 8, 16]}}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. a.b=1")
    parser.add_argument("--trials", type=int, default=0, help="also run a search study of N trials (>= 12 for the figure)")
    parser.add_argument("--no-run", action="store_true", help="skip the single LoRA run (study only)")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from loratune.config import load_config
    from loratune.evaluation import Evaluator, load_references
    from loratune.world.folder import write_world

    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    with tempfile.TemporaryDirectory() as tmp:
        world = write_world(Path(tmp) / "world")
        config = load_config(world.config, overrides)
        evaluator = Evaluator(config, references=load_references(config), show_progress=False)
        if not args.no_run:
            rows = lora_run(config, evaluator, world.target, Path(tmp), args.json)
            show("LoRA run (world config)", rows, args.json, label="epoch")
        if args.trials:
            study_overrides = [*overrides, f"search.n_trials={args.trials}", STUDY_SPACE]
            rows = study(load_config(world.config, study_overrides), world.target, Path(tmp) / "study")
            show(f"search study ({args.trials} trials)", rows, args.json, label="trial")


def oracle_row(samples: list, target: str) -> dict[str, Any]:
    from PIL import Image

    from loratune.world.oracle import judge

    images = [Image.open(s.path).convert("RGB") for s in samples]
    return judge(images, [s.prompt for s in samples], target).as_dict()


def lora_run(config, evaluator, target: str, tmp: Path, as_json: bool) -> list[dict[str, Any]]:
    """Epoch 0 (the base model) and every epoch of one LoRA run: oracle verdict + the Evaluator's scores."""
    from loratune.evaluation import collect_samples
    from loratune.train import train

    rows: list[dict[str, Any]] = []
    base = tmp / "base-samples"  # the trainer draws the base model's own samples here before its first step

    def record(epoch: int, samples: list, started: float) -> None:
        result = evaluator.score(samples)
        risk = result.copy_risk
        row = {"epoch": epoch, **oracle_row(samples, target), "composite": result.composite,
               "axes": result.normalised, "copy_rate": None if risk is None else risk.rate,
               "max_similarity": None if risk is None or not risk.similarities else max(risk.similarities),
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row) if as_json else _line(row), flush=True)

    def on_checkpoint(info) -> None:
        if not rows:
            record(0, collect_samples(base), start)
        record(info.epoch, info.samples, start)

    start = time.perf_counter()
    train(config, tmp / "run", on_checkpoint=on_checkpoint, base_samples=base)
    diagnose_rows(rows[1:], config)
    return rows


def diagnose_rows(rows: list[dict[str, Any]], config) -> None:
    """The product's per-epoch diagnosis (``loratune.learning.diagnosis``) of the LoRA's epochs, as the search writes
    it to scores.json: underfit / good / overfit / copying, with the rule that fired."""
    from loratune.learning.diagnosis import EpochMeasures, diagnose

    learning = config.evaluation.learning
    found = diagnose([EpochMeasures(r["epoch"], r["axes"], r["copy_rate"]) for r in rows],
                     learning.identity_low, learning.overfit_drop, learning.max_copy_rate)
    for row, d in zip(rows, found):
        row["diagnosis"], row["rule"] = d.label, d.rule
        print(f"epoch {row['epoch']:>2}: {d.label:<8} {d.rule}", flush=True)


def study(config, target: str, run_dir: Path) -> list[dict[str, Any]]:
    """Run a real study; then every scored epoch of every trial: the composite it got, the oracle on its samples."""
    from loratune.evaluation import collect_samples
    from loratune.search.runner import run_optimize

    start = time.perf_counter()
    run_optimize(config, run_dir, workers=1, say=lambda msg: print(msg, flush=True))
    print(f"study: {time.perf_counter() - start:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    for trial in sorted((run_dir / "trials").glob("[0-9]*")):
        scores = json.loads((trial / "scores.json").read_text())
        phase = json.loads((trial / "params.json").read_text())["phase"]
        for epoch in scores["epochs"]:
            folder = trial / "samples" / f"epoch-{epoch['epoch']:04d}"
            if not folder.is_dir() and epoch["epoch"] == scores["best_epoch"] and scores["samples"]:
                folder = trial / scores["samples"]  # the ensemble: one merged LoRA, scored once
            if epoch["composite"] is None or not folder.is_dir():
                continue
            rows.append({"trial": int(trial.name), "phase": phase, "epoch": epoch["epoch"],
                         **oracle_row(collect_samples(folder), target),
                         "composite": epoch["composite"], "axes": epoch["axes"]})
    return rows


def correlations(rows: list[dict[str, Any]]) -> list[tuple[str, str, float | None, int]]:
    """Spearman of the composite against each oracle reading, and of each axis against the reading it tracks."""
    from scipy.stats import spearmanr

    def rho(xs: list, ys: list) -> float | None:
        pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
            return None  # a constant series has no rank order
        return float(spearmanr(*zip(*pairs)).statistic)

    out = [("composite", o, rho([r["composite"] for r in rows], [r[o] for r in rows]), len(rows)) for o in ORACLE]
    for axis, o in AXIS_ORACLE.items():
        values = [r["axes"].get(axis) for r in rows]
        if any(v is not None for v in values):
            out.append((axis, o, rho(values, [r[o] for r in rows]), len(rows)))
    return out


def show(title: str, rows: list[dict[str, Any]], as_json: bool, label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    stats = correlations(rows)
    if as_json:
        print(json.dumps({"title": title, "spearman": stats}))
        return
    axes = sorted({a for r in rows for a in r["axes"]})
    table = Table(title=title)
    columns = ["trial", "phase", "epoch"] if label == "trial" else ["epoch"]
    learning = [c for c in ("copy_rate", "diagnosis") if any(r.get(c) is not None for r in rows)]
    for name in [*columns, "identity", "traits", "scene", "quality", "diversity", "composite", *axes, *learning]:
        table.add_column(name.replace("_", " "), justify="right")
    for r in rows:
        oracle = [r["identity_rate"], r["identity_mean"], r["scene_accuracy"], r["quality"], r["diversity"]]
        cells = [*(str(r[c]) for c in columns), *(_f(v) for v in oracle), _f(r["composite"])]
        extra = [_f(r.get(c)) if c == "copy_rate" else str(r.get(c) or "—") for c in learning]
        table.add_row(*cells, *(_f(r["axes"].get(a)) for a in axes), *extra)
    console = Console(width=160)
    console.print(table)
    spear = Table(title=f"Spearman ρ across {len(rows)} epochs ({title})")
    for name in ("score", "oracle", "ρ"):
        spear.add_column(name, justify="right" if name == "ρ" else "left")
    for score, oracle_name, value, _ in stats:
        spear.add_row(score, oracle_name, _f(value))
    console.print(spear)


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _line(r: dict) -> str:
    axes = "  ".join(f"{a} {_f(v)}" for a, v in sorted(r["axes"].items()))
    return (
        f"epoch {r['epoch']:>2}  identity {r['identity_rate']:.2f}  traits {r['identity_mean']:.2f}  "
        f"scene {r['scene_accuracy']:.2f}  quality {r['quality']:.2f}  diversity {r['diversity']:.3f}  "
        f"composite {_f(r['composite'])}  [{axes}]  ({r['n']} images, {r['seconds']} s)"
    )


if __name__ == "__main__":
    main()
