"""``loratune optimize``: the three-phase search (baseline → sampler search with pruning → refinement + ensemble)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def command(
    config: Annotated[Path | None, typer.Argument(metavar="CONFIG", help="loratune YAML config (not needed with --resume)")] = None,
    run: Annotated[Path | None, typer.Option("--run", "-r", help="run directory (default runs/<config name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --run: finished trials stay, crashed ones retry")] = False,
    workers: Annotated[int | None, typer.Option(
        min=1, help="worker processes on this machine (one per GPU); with ray: Ray workers (default search.ray.max_concurrent)")] = None,
    backend: Annotated[str | None, typer.Option(
        help="local (worker processes) or ray (the same workers as Ray actors); default: the config's search.backend")] = None,
    storage: Annotated[str | None, typer.Option(help="postgresql:// or mysql:// URL shared by many machines")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="override a config key, e.g. search.n_trials=30 (with --resume: search settings only)")] = None,
    warm_start: Annotated[list[Path] | None, typer.Option(
        "--warm-start", metavar="RUN", help="an earlier run (same model family) whose trials seed this study; "
        "repeat for several (search.warm_start)")] = None,
) -> None:
    """Search LoRA hyperparameters: every epoch is scored, weak trials are pruned, the best LoRA lands in RUN/best/."""
    from loratune.config import load_config
    from loratune.errors import LoratuneError

    if backend not in (None, "local", "ray"):
        raise LoratuneError(f"--backend: expected local or ray (got {backend!r})")
    overrides = list(set_ or [])
    if storage:
        overrides.append(f"search.storage={storage}")
    if warm_start:
        if resume:
            raise LoratuneError("--warm-start: only when a run starts (a resumed study keeps the warm start it had)")
        overrides.append("search.warm_start=" + json.dumps([str(p) for p in warm_start]))
    if resume:
        if run is None:
            raise LoratuneError("--resume: needs --run RUN_DIR")
        cfg = None
        chosen = resumed_backend(run, backend)
    else:
        if config is None:
            raise LoratuneError("optimize: give a CONFIG file (or --resume --run RUN_DIR)")
        cfg = load_config(config, overrides)
        overrides = []
        run = run or Path("runs") / config.stem
        chosen = backend or cfg.search.backend
    try:
        if chosen == "ray":
            from loratune.search.ray_backend import run_ray

            best = run_ray(cfg, run, resume=resume, overrides=overrides, workers=workers)
        else:
            from loratune.search.runner import run_optimize

            best = run_optimize(cfg, run, resume=resume, workers=workers, overrides=overrides)
    except KeyboardInterrupt:
        print(f"loratune: interrupted — resume with: loratune optimize --run {run} --resume", file=sys.stderr)
        raise typer.Exit(130) from None
    if best is None:
        print(f"no trial finished; see {run}/trials")
    else:
        state = "" if best.state.name == "COMPLETE" else f", {best.state.name.lower()} trial"
        held = json.loads((Path(run) / "best" / "best.json").read_text())
        how = " on its finalist samples" if held.get("finalist") else ""
        taste = ", by your calibrated weights" if held.get("calibrated") else ""
        print(f"best: trial {best.number} ({best.user_attrs.get('phase')}{state}) epoch {held['best_epoch']}, "
              f"composite {held['composite']:.4f}{how}{taste} -> {Path(run) / 'best'}")


def resumed_backend(run: Path, backend: str | None) -> str:
    """A resumed run goes on with the backend it was started with (its config.yaml), unless told otherwise."""
    from loratune.config import load_config
    from loratune.runfolder import RunFolder

    stored = RunFolder(run).config
    return backend or (load_config(stored).search.backend if stored.is_file() else "local")
