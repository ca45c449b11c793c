"""``loratune demo``: the whole loop offline, on loratune's known-truth world.

Writes the world (``loratune.world``: a tiny base model pre-trained here on a procedural world, a dataset of a target
character it has never seen, held-out references, a world-trained CLIP for the scorers), audits the dataset, runs a
short three-phase search (baseline → search with pruning → refinement → ensemble) in a fresh run directory, writes the
report with the pixel oracle's verdict beside every score, and says where everything is. Nothing is downloaded; two
scorers are still random stand-ins and every output says which.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from loratune.errors import LoratuneError
from loratune.runfolder import STUDY_NAME, RunFolder

# The demo's search: small enough for a few minutes on 2 CPU cores, big enough to show every phase: a baseline, 3
# sampler trials, 1 refinement and the ensemble of the best 2, each trial 4 epochs of 50 steps. The baseline trains at
# 1e-4, the usual LoRA default, which on this world is too cautious to learn the character in 4 epochs; the search
# looks from 1e-4 to 3e-3. The median pruner judges a trial from the third on against the earlier ones' median at the
# same epoch; Hyperband needs more trials than a demo has.
DEMO_OVERRIDES = [
    "search.n_trials=5",
    "search.sampler=tpe",
    "search.seed=0",
    "search.pruner=median",
    "search.phases.baseline=true",
    "search.phases.refine_trials=1",
    "search.phases.ensemble_top_k=2",
    "search.phases.ensemble_method=svd",
    "search.heartbeat_interval=5",
    ("search.space={learning_rate: {type: float, low: 0.0001, high: 0.003, log: true},"
     " rank: {type: categorical, choices: [4, 8]}}"),
    "train.learning_rate=1e-4",
    "train.epochs=4",
]


@dataclass
class DemoResult:
    out_dir: Path
    models_dir: Path
    dataset: Path
    config: Path
    run_dir: Path
    report: Path
    audit: Path
    best_lora: Path | None
    states: dict[str, int]
    phases: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    pruning: str = ""  # "pruned N trials, saved M of K epochs"
    truth: list[tuple[str, float | None, float]] = field(default_factory=list)  # (who, identity rate, oracle score)


def _claim_run_dir(parent: Path, stamp: str) -> Path:
    """A new, empty run folder named by the time; two demos started in the same second get ``-2``, ``-3``, …."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise LoratuneError(f"{parent}: too many runs named {stamp}*")


def _progress(console: Console) -> Progress:
    # At 80 columns the fixed columns keep their width and the status wraps inside its own cell (at word breaks)
    # instead of rich squeezing every column until the bar and counts vanish.
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                    BarColumn(bar_width=12), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}", table_column=Column(ratio=1, overflow="fold")),
                    console=console)


@contextmanager
def _stage(progress: Progress, description: str, seconds: dict[str, float], key: str) -> Iterator[dict[str, str]]:
    """A one-step task; the body may set ``note["status"]`` to replace the closing "done in …"."""
    task = progress.add_task(description, total=1, status="")
    note: dict[str, str] = {}
    start = time.perf_counter()
    try:
        yield note
    finally:
        seconds[key] = time.perf_counter() - start
        progress.update(task, completed=1, status=note.get("status", f"[green]done in {seconds[key]:.1f}s"))


class StudyWatcher(threading.Thread):
    """Follows the study from a second connection and moves the search's progress bar (trials and epochs)."""

    def __init__(self, run_dir: Path, progress: Progress, task: Any, total: int) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.progress = progress
        self.task = task
        self.total = total
        self.stop = threading.Event()

    def run(self) -> None:
        import optuna

        study = None
        while not self.stop.wait(0.5):
            if study is None:
                # The runner writes config.yaml after it created the study: opening the database earlier would race
                # its table creation.
                run = RunFolder(self.run_dir)
                if not run.config.is_file():
                    continue
                try:
                    study = optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None))
                except Exception:  # noqa: BLE001, S112 - the runner is still creating it
                    continue
            try:
                self.update(study.get_trials(deepcopy=False))
            except Exception:  # noqa: BLE001, S112 - a locked database for a moment: try on the next tick
                continue

    def training_step(self, number: int) -> dict[str, Any] | None:
        """The last line of the running trial's train_log.jsonl (its folder has a temporary name until the trial
        ends): the epoch being trained and its step."""
        import json

        for log in (folder / "train_log.jsonl" for folder in RunFolder(self.run_dir).building_dirs(number)):
            if not log.is_file():
                continue
            try:
                with open(log, "rb") as fh:
                    fh.seek(max(0, log.stat().st_size - 400))
                    record = json.loads(fh.read().decode("utf-8", "replace").strip().splitlines()[-1])
                return record if isinstance(record, dict) and "step" in record else None
            except (OSError, ValueError, IndexError):
                return None
        return None

    def update(self, trials: list[Any]) -> None:
        finished = [t for t in trials if t.state.is_finished()]
        running = [t for t in trials if t.state.name == "RUNNING"]
        pruned = sum(t.state.name == "PRUNED" for t in trials)
        parts = []
        if running:
            t = running[-1]
            scored = max(t.intermediate_values) if t.intermediate_values else None
            record = self.training_step(t.number) or {}
            # Intermediate values name the epochs already scored; the one being trained is the next (or the train
            # log's own, which is ahead of the scores while the last epoch is sampled and scored).
            epoch = max(int(record.get("epoch") or 0), (scored or 0) + 1)
            steps = (f" (step {record['step']}/{record['total_steps']})"
                     if record.get("epoch") == epoch and "total_steps" in record else "")
            last = f"{t.intermediate_values[scored]:.3f}" if scored is not None else "—"
            parts.append(f"#{t.number} {t.user_attrs.get('phase', '…')}: training epoch {epoch}{steps}, "
                         f"last scored {last}")
        if pruned:
            parts.append(f"{pruned} pruned")
        self.progress.update(self.task, completed=min(len(finished), self.total), status="; ".join(parts))


def _audit(dataset: Path, config: Any, run_dir: Path) -> tuple[Path, int]:
    """Audit the dataset into ``run_dir/audit.json`` (where the report finds it); returns (path, flagged images)."""
    from loratune.audit import AuditOptions, run_audit

    # The world CLIP is small and sees one character in four scenes: two poses in one scene sit at cosine 0.97-0.99
    # in its space, where real CLIP's 0.97 means a near-copy. The planted copy (4% brighter) is at 0.998.
    result = run_audit(dataset, config, out_dir=run_dir, options=AuditOptions(duplicate_cosine=0.995))
    return result.path, len(result.flagged)


def _quiet() -> None:
    """Library chatter (deprecation warnings, per-load progress bars) would tear up the demo's own progress display."""
    from loratune.chatter import quiet_libraries

    quiet_libraries(all_warnings=True)
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def plant_flaws(train_dir: Path) -> list[Path]:
    """Give the audit something to find, as real datasets do: in the first character's folder, image 3 becomes a
    near-copy of image 2 (same caption, 4% brighter) and image 4 is blurred. Returns the two files changed."""
    from PIL import Image, ImageEnhance, ImageFilter

    folder = min(p for p in train_dir.iterdir() if p.is_dir())
    images = sorted(folder.glob("*.png"))
    if len(images) < 4:
        return []
    original, duplicate, blurred = images[1], images[2], images[3]
    with Image.open(original) as img:
        ImageEnhance.Brightness(img.convert("RGB")).enhance(1.04).save(duplicate)
    duplicate.with_suffix(".txt").write_text(original.with_suffix(".txt").read_text())
    with Image.open(blurred) as img:
        img.convert("RGB").filter(ImageFilter.GaussianBlur(3)).save(blurred)
    return [duplicate, blurred]


def run_demo(out_dir: str | Path = "demo-run", console: Console | None = None,
             overrides: list[str] | None = None) -> DemoResult:
    """Run the whole loop into ``out_dir``: ``world/`` (written again each time, identically) and a new
    ``runs/<time>/``.

    ``overrides`` (``key=value``) are applied after the demo's own, e.g. to make it shorter still.
    """
    import optuna

    from loratune.config import load_config
    from loratune.report import build_report
    from loratune.search.runner import pruning_savings, run_optimize
    from loratune.world.folder import write_world

    console = console or Console(stderr=True)
    _quiet()
    out_dir = Path(out_dir).resolve()
    run_dir = _claim_run_dir(out_dir / "runs", _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    seconds: dict[str, float] = {}
    messages: list[str] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _progress(console) as progress:
        with _stage(progress, "Known-truth world", seconds, "world"):
            world = write_world(out_dir / "world")
            plant_flaws(world.dataset)
        config = load_config(world.config, DEMO_OVERRIDES + list(overrides or []))
        start = time.perf_counter()
        with _stage(progress, "Dataset audit", seconds, "audit") as note:
            audit_path, flagged = _audit(world.dataset, config, run_dir)
            note["status"] = f"[green]{flagged} image(s) flagged, done in {time.perf_counter() - start:.1f}s"
        total = config.search.n_trials + (1 if config.search.phases.ensemble_top_k >= 2 else 0)
        task = progress.add_task("Search", total=total, status="")
        watcher = StudyWatcher(run_dir, progress, task, total)
        watcher.start()
        start = time.perf_counter()
        try:
            run_optimize(config, run_dir, say=messages.append)
        finally:
            watcher.stop.set()
            watcher.join()
            seconds["search"] = time.perf_counter() - start
        study = optuna.load_study(study_name=STUDY_NAME, storage=RunFolder(run_dir).storage_url(None))
        trials = study.get_trials(deepcopy=False)
        watcher.update(trials)
        progress.update(task, completed=total, status=f"[green]done in {seconds['search']:.0f}s")
        with _stage(progress, "Report", seconds, "report"):
            report = build_report(run_dir)
    states: dict[str, int] = {}
    phases: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        phase = str(t.user_attrs.get("phase", "?"))
        phases[phase] = phases.get(phase, 0) + 1
    best_dir = RunFolder(run_dir).best
    best_lora = next(iter(sorted(best_dir.glob("*.safetensors"))), None) if best_dir.is_dir() else None
    return DemoResult(out_dir, world.root, world.dataset, RunFolder(run_dir).config, run_dir, report.path, audit_path,
                      best_lora, states, phases, seconds, str(pruning_savings(trials)), _truth(run_dir))


def _truth(run_dir: Path) -> list[tuple[str, float | None, float]]:
    """The oracle's reading of the base model, the baseline trial and RUN/best, as the report's headline shows it."""
    from loratune.report.oracle_section import headline, oracle_rows, oracle_score, run_world
    from loratune.report.pick_section import held
    from loratune.report.rundir import load_run

    run = load_run(run_dir)
    world = run_world(run)
    if world is None:
        return []
    rows = oracle_rows(run, str(world["target"]))
    return [(name, row.identity, oracle_score(row)) for name, row in headline(run, rows, held(run_dir))]


def print_summary(result: DemoResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="loratune demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("world", str(result.models_dir))
    table.add_row("dataset", str(result.dataset))
    table.add_row("config", str(result.config))
    table.add_row("audit", str(result.audit))
    table.add_row("run", str(result.run_dir))
    table.add_row("trials", ", ".join(f"{n} {s}" for s, n in sorted(result.states.items())))
    table.add_row("phases", ", ".join(f"{n} {p}" for p, n in result.phases.items()))
    table.add_row("pruning", result.pruning)
    table.add_row("best LoRA", str(result.best_lora) if result.best_lora else "[yellow]none")
    for who, identity, score in result.truth:
        shown = "—" if identity is None else f"{identity:.2f}"
        table.add_row("truth" if who == result.truth[0][0] else "",
                      f"{who}: target drawn in {shown} of samples (oracle score {score:.2f})")
    table.add_row("time", ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
                  + f" (total {sum(result.seconds.values()):.0f}s)")
    table.add_row("report", f"[bold green]{result.report}")
    console.print(table)
    console.print("[yellow]The base model and the CLIP scorer were trained here on loratune's procedural world; the "
                  "aesthetics MLP and the LPIPS backbone are random stand-ins. The scores mean something about this "
                  "world only.")
    console.print(f"Open the report: [bold]file://{result.report}")
