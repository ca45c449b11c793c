"""Cost on the x-axis, on the known-truth world: what a search's RUN/best is worth for the seconds it spent.

    python benchmarks/world_cost.py costs [--store DIR --table T]      # the replay's cost model, from measured seconds
    python benchmarks/world_cost.py equal-cost [--seeds 20] [--set K=V] # the default vs plain random search
    python benchmarks/world_cost.py gating [--seeds 20]                 # what each cheap-signal shortcut saves and loses

Every study is a real ``loratune optimize`` run replaying the measured table (``world_search.py``'s ``TableTrials``);
each epoch's seconds come from the cost model in ``benchmarks/data/world_costs.json``: the seconds ``world_search.py
measure`` recorded per epoch (training, validation, sampling) and ``score`` per scoring call on this machine, fitted
as a cost per epoch (by rank) and a fixed plus per-image cost for sampling and scoring. Measured seconds carry the
shared machine's noise, so the replay uses the model (medians), not each epoch's own seconds; the character does not
change what an epoch costs, so one model serves both targets.

``equal-cost`` runs, per seed and interleaved, the default search (TPE, patient pruning, the default gate, 8 trials)
and plain random search (no baseline, no pruning, every trial from the whole space), each study's RUN/best judged by
the oracle, and reads both as anytime curves: the RUN/best the product's rule (``selection.pick`` with finalists)
would hand back had the study stopped after k trials, at what it had cost by then (``world_search.prefix_picks``).
Random search at equal cost is its longest prefix that costs no more than the default's whole study (same seed).
``gating`` runs the default with each shortcut of ``search.gating`` on and off: regret, and the seconds of sampling
and scoring (finalists included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))  # the runner imports the replay backend as world_search:make

import numpy as np
from anytime import at_cost
from world_search import COSTS, STORE, TABLE, Table, one_study

# The default search at 8 trials and plain random search (sampler, pruner, overrides).
DEFAULT = ("tpe", "patient", [])
PLAIN_RANDOM = ("random", "none", ["search.phases.baseline=false"])


def fit_costs(store: Path, table_path: Path) -> dict[str, Any]:
    """The cost model from what ``measure`` (per-epoch training, validation and sampling seconds, the fresh samples'
    seconds) and ``score`` (each scoring call's seconds) recorded: medians, sampling and scoring as a line in the
    number of images through the medians at the two (or three) image counts measured."""
    points = [json.loads((p / "epochs.json").read_text()) for p in sorted(store.iterdir()) if (p / "epochs.json").is_file()]
    epochs = [(p["rank"], e) for p in points for e in p["epochs"] if e.get("seconds")]
    if not epochs:
        raise SystemExit(f"{store}: no measured seconds (measure it with this version of world_search.py)")
    searched = len(points[0]["search_seeds"]) * 4  # 4 prompts
    fresh = len(points[0]["fresh_seeds"]) * 4
    rows = json.loads(table_path.read_text())["rows"]

    def line(counts: dict[int, list[float]]) -> dict[str, float]:
        xs = sorted(counts)
        ys = [float(np.median(counts[x])) for x in xs]
        slope, intercept = np.polyfit(xs, ys, 1)
        return {"fixed": round(max(0.0, float(intercept)), 4), "per_image": round(float(slope), 5),
                "measured": {str(x): round(y, 3) for x, y in zip(xs, ys)}}

    scores: dict[int, list[float]] = {}
    for r in rows:
        if r.get("score_seconds") is not None:
            scores.setdefault(int(r["images"]), []).append(r["score_seconds"])
            scores.setdefault(int(r["finalist"]["images"]), []).append(r["finalist"]["score_seconds"])
        for sub in (r.get("seeds") or {}).values():
            scores.setdefault(int(sub["images"]), []).append(sub["score_seconds"])
    if not scores:
        raise SystemExit(f"{table_path}: no scoring seconds (score it with this version of world_search.py)")
    return {
        "machine": f"{os.cpu_count()} CPU cores (shared), torch threads 2",
        "device": epochs[0][1].get("device"),
        "source": f"{store.name} grid: {len(points)} runs x {len(points[0]['epochs'])} epochs; scoring: {table_path.name}",
        "setup": round(float(np.median([e["seconds"]["setup"] for _, e in epochs if "setup" in e["seconds"]])), 3),
        "train": {str(rank): round(float(np.median([e["seconds"]["train"] for r, e in epochs if r == rank])), 3)
                  for rank in sorted({r for r, _ in epochs})},
        "validation": round(float(np.median([e["seconds"]["validation"] for _, e in epochs])), 3),
        "sample": line({searched: [e["seconds"]["sample"] for _, e in epochs],
                        fresh: [e["seconds"]["fresh_sample"] for _, e in epochs]}),
        "score": line(scores),
    }


@contextmanager
def world(table: Path) -> Iterator[Path]:
    """A temporary world folder (its config) for the replayed studies, on tmpfs where there is one."""
    import torch

    from loratune.world.folder import write_world

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.environ["LORATUNE_WORLD_TABLE"] = str(table)
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-world-cost-", dir=shm if shm.is_dir() else None))
    try:
        os.environ["LORATUNE_WORLD_CONFIG"] = str(write_world(root / "world").config)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def equal_cost(table_path: Path, seeds: int, first: int, trials: int, random_trials: int,
               overrides: list[str]) -> dict[str, Any]:
    table = Table(table_path)
    runs: dict[str, list[dict[str, Any]]] = {"default": [], "random": []}
    with world(table_path) as root:
        for seed in range(first, first + seeds):  # interleaved: each seed runs both
            sampler, pruner, sets = DEFAULT
            runs["default"].append(one_study(root, table, sampler, pruner, seed, trials, [*sets, *overrides]))
            sampler, pruner, sets = PLAIN_RANDOM
            runs["random"].append(one_study(root, table, sampler, pruner, seed, random_trials, sets))
    paired = [at_cost(r["anytime"], d["cost"], table.optimum()) for d, r in zip(runs["default"], runs["random"])]
    at_trials = [next(a["regret"] for a in r["anytime"] if a["trials"] == trials) for r in runs["random"]]
    out = {
        "seeds": seeds, "trials": trials, "overrides": overrides, "optimum": table.optimum(),
        "default": {"median_regret": _median([d["regret"] for d in runs["default"]]),
                    "mean_regret": float(np.mean([d["regret"] for d in runs["default"]])),
                    "median_cost": _median([d["cost"] for d in runs["default"]]),
                    "collapsed": sum(d["collapsed"] for d in runs["default"]),
                    "seconds": {k: _median([d["seconds"][k] for d in runs["default"]])
                                for k in runs["default"][0]["seconds"]}},
        "random_at_equal_cost": {"median_regret": _median([p[0] for p in paired]),
                                 "mean_regret": float(np.mean([p[0] for p in paired])),
                                 "median_trials": _median([p[1] for p in paired])},
        "random_at_equal_trials": {"median_regret": _median(at_trials),
                                   "median_cost": _median([next(a["cost"] for a in r["anytime"] if a["trials"] == trials)
                                                           for r in runs["random"]])},
        "anytime": anytime_table(runs, table.optimum()),
        "runs": runs,
    }
    out["ratio"] = out["default"]["median_regret"] / out["random_at_equal_cost"]["median_regret"] \
        if out["random_at_equal_cost"]["median_regret"] else float("inf")
    return out


def anytime_table(runs: dict[str, list[dict[str, Any]]], optimum: float,
                  fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)) -> list[dict[str, Any]]:
    """Median regret of each method at budgets that are fractions of the default's median whole-study cost."""
    reference = _median([d["cost"] for d in runs["default"]])
    rows = []
    for f in fractions:
        row: dict[str, Any] = {"budget": f * reference, "fraction": f}
        for name, studies in runs.items():
            row[name] = _median([at_cost(s["anytime"], f * reference, optimum)[0] for s in studies])
        rows.append(row)
    return rows


# Each shortcut of search.gating on its own, then together (the overrides every default study gets on top).
GATES = {
    "every epoch": ["search.gating={every: 1, skip_diverged: false, stop_diverged: false}"],
    "skip diverged": ["search.gating={every: 1, skip_diverged: true, stop_diverged: false}"],
    "stop diverged": ["search.gating={every: 1, skip_diverged: true, stop_diverged: true}"],
    "every 2nd": ["search.gating={every: 2, skip_diverged: false, stop_diverged: false}"],
    "2 seeds": ["search.gating={every: 1, skip_diverged: false, stop_diverged: false, seeds: 2}"],
    "every 2nd + stop diverged": ["search.gating={every: 2, skip_diverged: true, stop_diverged: true}"],
    "2 seeds + stop diverged": ["search.gating={every: 1, skip_diverged: true, stop_diverged: true, seeds: 2}"],
    "every 2nd + 2 seeds + stop": ["search.gating={every: 2, skip_diverged: true, stop_diverged: true, seeds: 2}"],
    "2 seeds race 2": ["search.gating={every: 1, skip_diverged: false, stop_diverged: false, seeds: 2, race: 2}"],
    "2 seeds race 2 + stop": ["search.gating={every: 1, skip_diverged: true, stop_diverged: true, seeds: 2, race: 2}"],
    "2 seeds race 1 + stop": ["search.gating={every: 1, skip_diverged: true, stop_diverged: true, seeds: 2, race: 1}"],
}


def gating(table_path: Path, seeds: int, first: int, trials: int, names: list[str]) -> dict[str, Any]:
    table = Table(table_path)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with world(table_path) as root:
        for seed in range(first, first + seeds):
            for name in names:
                sampler, pruner, sets = DEFAULT
                runs[name].append(one_study(root, table, sampler, pruner, seed, trials, [*sets, *GATES[name]]))
    base = names[0]

    def paid(r: dict[str, Any]) -> float:
        return r["seconds"]["sample"] + r["seconds"]["score"] + r["seconds"]["finalists"]

    reference = _median([paid(r) for r in runs[base]])
    rows = {}
    for name, studies in runs.items():
        regrets = [r["regret"] for r in studies]
        rows[name] = {"median_regret": _median(regrets), "mean_regret": float(np.mean(regrets)),
                      "iqr": [float(np.percentile(regrets, 25)), float(np.percentile(regrets, 75))],
                      "collapsed": sum(r["collapsed"] for r in studies),
                      "sample_score_seconds": _median([paid(r) for r in studies]),
                      "saved": 1 - _median([paid(r) for r in studies]) / reference if reference else 0.0,
                      "cost": _median([r["cost"] for r in studies]),
                      "epochs": _median([r["epochs"] for r in studies]), "scored": _median([r["scored"] for r in studies])}
    return {"seeds": seeds, "trials": trials, "reference": base, "rows": rows, "runs": runs}


def _print_gating(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    out = RichTable(title=f"Gating on the world: {result['trials']} trials, {result['seeds']} seeds (TPE + patient)")
    for col in ("gate", "median regret", "mean", "IQR", "collapsed", "epochs trained / scored",
                "sample+score s", "saved", "total s"):
        out.add_column(col, justify="left" if col == "gate" else "right")
    for name, r in result["rows"].items():
        out.add_row(name, f"{r['median_regret']:.3f}", f"{r['mean_regret']:.3f}",
                    f"{r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}", f"{r['collapsed']}/{result['seeds']}",
                    f"{r['epochs']:.0f} / {r['scored']:.0f}", f"{r['sample_score_seconds']:.0f}",
                    f"{r['saved']:.0%}", f"{r['cost']:.0f}")
    Console(width=130).print(out)


def _print_equal_cost(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    d, r, t = result["default"], result["random_at_equal_cost"], result["random_at_equal_trials"]
    out = RichTable(title=f"Default vs plain random search on the world, {result['seeds']} seeds "
                          f"(optimum {result['optimum']:.3f}){' ' + ' '.join(result['overrides']) if result['overrides'] else ''}")
    for col in ("search", "median regret", "mean regret", "trials", "median cost (s)"):
        out.add_column(col, justify="left" if col == "search" else "right")
    out.add_row(f"default, {result['trials']} trials", f"{d['median_regret']:.3f}", f"{d['mean_regret']:.3f}",
                str(result["trials"]), f"{d['median_cost']:.0f}")
    out.add_row("plain random at equal cost", f"{r['median_regret']:.3f}", f"{r['mean_regret']:.3f}",
                f"{r['median_trials']:.1f}", f"{d['median_cost']:.0f}")
    out.add_row(f"plain random, {result['trials']} trials", f"{t['median_regret']:.3f}", "",
                str(result["trials"]), f"{t['median_cost']:.0f}")
    console = Console(width=130)
    console.print(out)
    console.print(f"default / random at equal cost: {result['ratio']:.2f}x; default's seconds (median): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in d["seconds"].items()))
    curve = RichTable(title="Anytime: median regret at a budget (fraction of the default's median study cost)")
    curve.add_column("budget (s)", justify="right")
    for name in ("default", "random"):
        curve.add_column(name, justify="right")
    for row in result["anytime"]:
        curve.add_row(f"{row['budget']:.0f} ({row['fraction']:.2g}x)", f"{row['default']:.3f}", f"{row['random']:.3f}")
    console.print(curve)


def main() -> None:
    from loratune.chatter import quiet_libraries

    quiet_libraries()  # the libraries' notices on import (bitsandbytes' offline kernel lookup) would bury the tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("costs", "equal-cost", "gating"))
    parser.add_argument("--store", type=Path, default=STORE / "albertoboy")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--costs-table", type=Path, help="`costs`: the table whose scoring seconds to use")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--random-trials", type=int, default=16)
    parser.add_argument("--gates", default=",".join(GATES), help="`gating`: which rows (the first is the reference)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="`equal-cost`: a config "
                        "override for the default search")
    parser.add_argument("--json", type=Path, help="also write every study's numbers here")
    args = parser.parse_args()
    if args.what == "costs":
        model = fit_costs(args.store, args.costs_table or args.table)
        COSTS.write_text(json.dumps(model, indent=1) + "\n")
        print(json.dumps(model, indent=1))
        return
    if args.what == "equal-cost":
        result = equal_cost(args.table, args.seeds, args.first_seed, args.trials, args.random_trials, args.overrides)
        _print_equal_cost(result)
    else:
        result = gating(args.table, args.seeds, args.first_seed, args.trials, args.gates.split(","))
        _print_gating(result)
    if args.json:
        args.json.write_text(json.dumps(result, default=float) + "\n")


if __name__ == "__main__":
    main()
