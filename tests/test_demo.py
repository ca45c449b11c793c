"""The demo: its plumbing on a real study, and the whole loop once (one search trial shorter than `make demo`)."""

from __future__ import annotations

import io
import json
import re

import optuna
import pytest
from report_run import make_run
from rich.console import Console

from loratune.config import load_config
from loratune.demo import DEMO_OVERRIDES, DemoResult, StudyWatcher, _progress, print_summary, run_demo


def test_watcher_counts_finished_trials_and_shows_the_running_epoch(tmp_path):
    run = make_run(tmp_path / "run")
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")
    live = study.ask()
    live.set_user_attr("phase", "refine")
    live.report(0.42, 1)
    # The running trial's folder has a temporary name; its trainer appends one JSON line per step.
    (run / "trials" / ".0006.abc").mkdir()
    (run / "trials" / ".0006.abc" / "train_log.jsonl").write_text(
        "".join(json.dumps({"epoch": 1, "step": s, "total_steps": 40, "loss": 0.1}) + "\n" for s in range(1, 13)))
    progress = _progress(Console(file=io.StringIO()))
    task = progress.add_task("search", total=7, status="")
    StudyWatcher(run, progress, task, 7).update(study.get_trials(deepcopy=False))
    shown = progress.tasks[0]
    assert shown.completed == 6
    # Epoch 1 is scored and its log is the newest line: epoch 2 is what trains now (its first step not yet logged).
    assert shown.fields["status"] == "#6 refine: training epoch 2, last scored 0.420; 1 pruned"


def test_demo_overrides_give_every_phase(tmp_path):
    from loratune.world.folder import write_world

    config = load_config(write_world(tmp_path / "world").config, DEMO_OVERRIDES)
    search = config.search
    assert search.phases.baseline and search.phases.refine_trials >= 1 and search.phases.ensemble_top_k >= 2
    assert search.n_trials - 1 - search.phases.refine_trials >= 3  # sampler trials: enough for the pruner to act
    assert search.pruner == "median" and config.train.sample_checkpoints


def test_summary_says_where_everything_is(tmp_path):
    result = DemoResult(tmp_path, tmp_path / "models", tmp_path / "dataset", tmp_path / "run" / "config.yaml",
                        tmp_path / "run", tmp_path / "run" / "report.html", tmp_path / "run" / "audit.json", None,
                        {"complete": 5, "pruned": 1}, {"baseline": 1, "search": 3}, {"search": 100.0},
                        "pruned 1 trial, saved 1 of 10 epochs",
                        [("baseline trial #0, epoch 4", 0.0, 0.0), ("RUN/best: trial #4, epoch 3", 0.62, 0.55)])
    out = io.StringIO()
    print_summary(result, Console(file=out, width=200))
    text = out.getvalue()
    assert f"file://{tmp_path / 'run' / 'report.html'}" in text
    assert "5 complete" in text and "1 pruned" in text and "stand-ins" in text
    assert "pruned 1 trial, saved 1 of 10 epochs" in text
    assert str(tmp_path / "run" / "audit.json") in text and "best LoRA" in text
    assert "RUN/best: trial #4, epoch 3: target drawn in 0.62 of samples (oracle score 0.55)" in text


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_runs_the_whole_loop(tmp_path):
    """The real demo on the known-truth world: every phase, pruning that saves epochs, a report with the oracle's
    verdict, and a best LoRA that truly draws the character the baseline never learned."""
    result = run_demo(tmp_path, Console(file=io.StringIO()))
    assert set(result.phases) == {"baseline", "search", "refine", "ensemble"}
    assert sum(result.states.values()) == 6 and result.states.get("complete", 0) >= 3
    # Issue 6: the demo's search shows pruning (the median pruner stops a trial early; runs are seeded).
    assert result.states.get("pruned", 0) >= 1, result.states
    # ... and the prune saved training: each pruned trial stopped before its last epoch.
    match = re.fullmatch(r"pruned (\d+) trials?, saved (\d+) of (\d+) epochs", result.pruning)
    assert match and int(match[1]) == result.states["pruned"] and 1 <= int(match[2]) < int(match[3]), result.pruning
    assert result.audit is not None and result.best_lora is not None and result.best_lora.is_file()
    audit = json.loads(result.audit.read_text())
    assert audit["summary"]["near_duplicate_pairs"] >= 1 and audit["summary"]["flagged_images"] >= 2
    # Issue 11: the oracle says the search found what the baseline (lr 1e-4) did not: the target character.
    truth = {who.split(":")[0].split(" #")[0]: (identity, score) for who, identity, score in result.truth}
    assert truth["base model, no LoRA"][0] == 0.0 and truth["baseline trial"][0] <= 0.125, result.truth
    assert truth["RUN/best"][0] >= 0.5 and truth["RUN/best"][1] > truth["baseline trial"][1] + 0.3, result.truth
    html = result.report.read_text()
    assert html.count('class="sample"') >= 4 * 5 and 'id="plot-history"' in html and 'id="stand-in-warning"' in html
    assert 'id="oracle"' in html and "World-trained by loratune" in html
    assert (result.run_dir / "best").is_dir() and result.report.parent == result.run_dir
