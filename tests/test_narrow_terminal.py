"""Console output on an 80-column terminal: nothing collapses, no file name or path is broken or cut."""

from __future__ import annotations

import io
import json

import optuna
from report_run import make_run
from rich.console import Console

from loratune.demo import StudyWatcher, _progress
from loratune.evaluation import EvaluationResult
from loratune.report.console import print_ranking, print_train_summary
from loratune.sampling import RankedLora
from loratune.train.records import CheckpointInfo, TrainResult


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=False, color_system=None), out


def test_search_status_at_80_columns(tmp_path):
    run = make_run(tmp_path / "run")  # one trial already pruned
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")
    live = study.ask()
    live.set_user_attr("phase", "search")
    console, out = _console()
    progress = _progress(console)
    for stage in ("Tiny models", "Two-character dataset", "Dataset audit"):
        progress.add_task(stage, total=1, completed=1, status="2 image(s) flagged, done in 3.1s")
    task = progress.add_task("Search", total=7, status="")
    watcher = StudyWatcher(run, progress, task, 7)
    # Epoch 1 trains and nothing is scored yet: never "epoch 0".
    (run / "trials" / ".0006.abc").mkdir()
    log = run / "trials" / ".0006.abc" / "train_log.jsonl"
    log.write_text(json.dumps({"epoch": 1, "step": 3, "total_steps": 40, "loss": 0.1}) + "\n")
    watcher.update(study.get_trials(deepcopy=False))
    assert progress.tasks[-1].fields["status"] == "#6 search: training epoch 1 (step 3/40), last scored —; 1 pruned"
    # Epoch 1 scored, epoch 2 training.
    live.report(0.4321, 1)
    log.write_text(json.dumps({"epoch": 2, "step": 25, "total_steps": 40, "loss": 0.1}) + "\n")
    watcher.update(study.get_trials(deepcopy=False))
    assert progress.tasks[-1].fields["status"] == "#6 search: training epoch 2 (step 25/40), last scored 0.432; 1 pruned"
    console.print(progress.get_renderable())
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    search = next(line for line in lines if "Search" in line)
    # The bar, the trial count and the elapsed time keep their place; the status wraps in its own cell.
    assert "━" in search and "6/7" in search and "0:00:00" in search
    status = " ".join(line.strip() for line in lines[lines.index(search):]).split("0:00:00", 1)[1]
    assert " ".join(status.split()) == "#6 search: training epoch 2 (step 25/40), last scored 0.432; 1 pruned"


def _result(composite: float, se: float | None = None) -> EvaluationResult:
    axes = ("alignment", "consistency", "aesthetics", "quality", "diversity")
    return EvaluationResult(samples=[], axes={}, normalised=dict.fromkeys(axes, 0.5), composite=composite,
                            weights_used={}, missing=[], backends=[], runtime={}, seconds=0.0, normalisations={},
                            composite_se=se)


def test_ranking_never_breaks_a_file_name(tmp_path):
    names = [f"luca_character_lora_v2-{e:06d}.safetensors" for e in (1, 2, 3)]
    ranked = [RankedLora(tmp_path / n, e, _result(0.5 - e / 100, 0.01 * e), tmp_path) for e, n in enumerate(names, 1)]
    console, out = _console()
    print_ranking(ranked, None, console)
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    for rank, name in enumerate(names, 1):
        assert f"   {rank}  {name}\n" in text  # whole, on one line, by rank
    assert "alignment" in text and "diversity" in text and "0.490" in text
    # the median standard error (0.02 of 0.01, 0.02, 0.03) and the difference it takes to tell two LoRAs apart
    assert "standard error over the images: 0.020 (median); two LoRAs closer than about 0.028" in " ".join(text.split())
    wide = io.StringIO()
    print_ranking(ranked, None, Console(file=wide, width=200))
    assert all(name in wide.getvalue() for name in names) and "rank  LoRA file" not in wide.getvalue()


def test_train_summary_keeps_whole_paths(tmp_path):
    out_dir = tmp_path / "runs" / "a-rather-long-output-name-for-the-character-lora"
    checkpoints = [CheckpointInfo(e, e * 20, out_dir / "checkpoints" / f"epoch-{e:04d}" / "diffusers",
                                  out_dir / "checkpoints" / f"epoch-{e:04d}" / f"luca_character-{e:06d}.safetensors",
                                  [], rank=16, resolution=512) for e in (1, 2)]
    console, out = _console()
    print_train_summary(out_dir, TrainResult(out_dir, checkpoints, 40, 2, final_loss=0.1234), console)
    text = out.getvalue()
    # The folder is one soft-wrapped line (the terminal wraps it, a copy gives the whole path); the table fits.
    assert f"run folder: {out_dir}\n" in text
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith("run folder:"))
    assert "40 steps, 2 epochs, final loss 0.1234" in text
    table = text.split("kohya file", 1)[1]
    cells = "".join(line.split()[-1] for line in table.splitlines()[2:] if line.strip())  # the file column, unwrapped
    assert cells == "".join(f"checkpoints/epoch-{e:04d}/luca_character-{e:06d}.safetensors" for e in (1, 2))
