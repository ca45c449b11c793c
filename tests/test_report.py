"""``loratune report`` on real Optuna studies and real PNG samples (see report_run.py)."""

from __future__ import annotations

import base64
import io
import os
import re

import optuna
import pytest
from PIL import Image
from plotly.offline import get_plotlyjs
from report_run import make_run

from loratune.cli import main
from loratune.errors import LoratuneError
from loratune.report import build_report
from loratune.report.page import rank_trials
from loratune.report.rundir import load_run

DATA_URI = re.compile(r'src="data:image/webp;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")


def test_report_is_one_offline_file(run_dir):
    result = build_report(run_dir)
    assert result.path == run_dir / "report.html"
    html = result.path.read_text()
    # plotly.js inline exactly once, and nothing fetched from anywhere.
    assert html.count(get_plotlyjs()[:200]) == 1
    page = html.replace(get_plotlyjs(), "")  # plotly.js's own strings mention URLs it never loads here
    assert not re.search(r'<script[^>]+src=', page)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "cdn.plot.ly" not in page
    # Every thumbnail is a real image that decodes; 64-px samples stay 64 px.
    uris = DATA_URI.findall(html)
    assert len(uris) == result.images + 2  # samples + the audit's two flagged images
    sizes = {Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris}
    assert sizes == {(64, 64)}
    umask = os.umask(0)
    os.umask(umask)
    assert result.path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes, not mkstemp's 0600
    # No temporary file left next to the report (atomic write).
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_report_content(run_dir):
    result = build_report(run_dir)
    html = result.path.read_text()
    assert result.trials == 6 and result.stand_in
    for key in ("history", "intermediate", "best-axes", "loss", "importances", "parallel", "timeline"):
        assert f'id="plot-{key}"' in html
    assert 'id="plot-pareto"' not in html
    assert 'id="stand-in-warning"' in html
    # Trial table: one row per trial, best first, with phases and states.
    table = html.split('id="trial-table"')[1].split("</table>")[0]
    assert table.count("<tr") == 7  # header + 6 trials
    assert re.findall(r'href="#trial-(\d+)"', table) == ["4", "5", "1", "0", "2", "3"]
    for word in ("baseline", "refine", "ensemble", "pruned", "fail", "merge of trials #4, #1", "pruned after epoch 1"):
        assert word in table
    assert "<th>rank</th><th>trial</th>" in table
    ensemble_row = table.split('href="#trial-5"')[1].split("</tr>")[0]
    assert "<td class='num'>merge</td>" in ensemble_row and ">0<" not in ensemble_row  # no "best epoch 0"
    # The quality axis was never computed: each scored trial (0, 1, 4, 5) says "missing", none shows it as a number.
    assert table.count('<td class="num missing"') == 4
    # Samples: trial 4 (best) comes first and its best epoch (2) is outlined; the ensemble shows its merged LoRA.
    samples = html.split('id="samples"')[1]
    assert samples.index('id="trial-4"') < samples.index('id="trial-5"') < samples.index('id="trial-0"')
    trial4 = samples.split('id="trial-4"')[1].split("</details>")[0]
    assert "rank 1 · trial #4 · refine · complete" in trial4  # numbered as in the table
    assert re.search(r'class="epoch best-epoch" data-epoch="2"', trial4)
    # The best trial's 3 epochs beside the base model without a LoRA (same prompts and seeds), which also opens
    # the section on its own.
    assert trial4.count('data-epoch=') == 4 and trial4.count('data-epoch="-1"') == 1
    assert samples.split('id="trial-')[0].count("base model, no LoRA") == 1 and 'id="base-samples"' in samples
    # Every thumbnail opens its full-size file, linked relative to the page.
    assert '<a href="trials/0004/samples/epoch-0002/p00-s1.png" target="_blank"' in trial4
    assert '<a href="samples/base/p01-s0.png" target="_blank"' in samples
    scores = trial4.split("class='epoch-scores'")[1].split("</table>")[0]
    assert scores.count("<tr") == 4 and scores.count('class="best-row"') == 1  # header + 3 epochs, epoch 2 best
    trial5 = samples.split('id="trial-5"')[1].split("</details>")[0]
    assert trial5.count('data-epoch=') == 1 and "merged LoRA" in trial5 and "best-epoch" not in trial5
    # 2 prompts x 2 seeds per grid. The 5 best-ranked trials show every epoch (4: 3, ensemble: 1, 1: 3, 0: 3,
    # pruned 2: 1); the 6th (the failed trial) only its best epoch; the base grid shows twice.
    assert result.images == 4 * (3 + 1 + 3 + 3 + 1 + 1 + 2)
    assert "luca boy on a beach" in samples and "seed 1" in samples
    # Audit summary and the models.
    audit = html.split('id="audit"')[1].split("</section>")[0]
    assert "near-duplicate of 10_luca/002.png" in audit and "blurry: sharpness 4.0; missing caption" in audit
    assert audit.count('class="audit-thumb"') == 2
    # A readable table with what each number means, not a dump of audit.json.
    summary = audit.split("<h3>Summary</h3>")[1].split("</table>")[0]
    assert "<td>near duplicate pairs</td><td class='num'>1</td><td class='muted'>pairs of images that look" in summary
    assert "<th>what it means</th>" in summary
    assert "<td>luca</td><td class='num'>6</td><td class='num'>1</td><td class='num'>0.97</td>" in audit
    assert "reference similarity: mean identity similarity" in audit
    assert "10_luca/011.png" not in audit and "per_image" not in audit  # per_image stays in audit.json
    assert "clipscore" in html and "lpips" in html and "BSD-2-Clause" in html
    assert "axes not computed: quality" in html and "alignment 0.353" in html


def test_ranking_uses_the_study(run_dir):
    run = load_run(run_dir)
    ranked = rank_trials(run)
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert ranked[0].number == study.best_trial.number
    assert [t.trial.state.name for t in ranked][-2:] == ["PRUNED", "FAIL"]
    assert ranked[0].best_epoch == study.best_trial.user_attrs["best_epoch"]


def test_limits_keep_the_file_small(run_dir):
    full = build_report(run_dir, run_dir / "full.html")
    small = build_report(run_dir, run_dir / "small.html", all_epochs_for=1, max_images=10)
    assert small.images == 10 < full.images
    assert small.size_bytes < full.size_bytes
    assert "Image budget of 10 thumbnails reached" in small.path.read_text()
    only_best = build_report(run_dir, run_dir / "best.html", all_epochs_for=1)
    assert only_best.images == 4 * (3 + 5 + 2)  # best: 3 epochs; the 5 others: their best epoch; the base grid twice


def test_multi_objective_has_a_pareto_front(tmp_path):
    result = build_report(make_run(tmp_path / "run", multi_objective=True))
    html = result.path.read_text()
    assert 'id="plot-pareto"' in html and 'id="plot-history-1"' in html
    assert "alignment: maximize, consistency: maximize" in html


def test_objective_names_from_the_runners_study_attribute(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    study = optuna.create_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("directions", {"alignment": "maximize", "diversity": "minimize"})
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=3)
    html = build_report(run).path.read_text()
    assert "alignment: maximize, diversity: minimize" in html and 'id="plot-pareto"' in html


def test_real_weights_show_no_warning(tmp_path):
    result = build_report(make_run(tmp_path / "run", stand_in=False))
    assert not result.stand_in
    assert 'id="stand-in-warning"' not in result.path.read_text()


def test_audit_found_next_to_the_dataset(run_dir, tmp_path):
    """`loratune audit` writes audit.json into the dataset folder by default; the report looks there too."""
    import yaml

    (run_dir / "audit.json").rename(tmp_path / "data" / "audit.json")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["dataset"] = {"path": str(tmp_path / "data")}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    html = build_report(run_dir).path.read_text()
    assert "near-duplicate of 10_luca/002.png" in html


def test_small_studies_still_give_a_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    study = optuna.create_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}", direction="maximize")
    empty = build_report(run)
    assert empty.trials == 0 and empty.images == 0
    assert "No sample images found" in empty.path.read_text()
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    html = build_report(run).path.read_text()
    assert "needs at least 2 completed trials" in html
    assert "No <code>audit.json</code>" in html


@pytest.mark.parametrize("setup, message", [
    ("missing", "run directory not found"),
    ("file", "not a directory"),
    ("empty", "no study.db"),
    ("garbage", "not an SQLite database"),
    ("other-study", "no study named 'loratune'"),
])
def test_bad_run_dirs(tmp_path, setup, message, capsys):
    run = tmp_path / "run"
    if setup == "file":
        run.write_text("x")
    elif setup != "missing":
        run.mkdir()
    if setup == "garbage":
        (run / "study.db").write_text("not a database")
    if setup == "other-study":
        optuna.create_study(study_name="other", storage=f"sqlite:///{run / 'study.db'}")
    with pytest.raises(LoratuneError, match=message):
        build_report(run)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (run / "report.html").exists() if run.is_dir() else True


def test_out_must_be_a_file(run_dir, capsys):
    assert main(["report", str(run_dir), "--out", str(run_dir / "trials")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "is a directory" in err
    assert not (run_dir / "report.html").exists()


def test_cli_prints_the_path(run_dir, capsys):
    assert main(["report", str(run_dir), "--thumb-size", "32"]) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "report.html") in out and "stand-in" in out
    uri = DATA_URI.search((run_dir / "report.html").read_text()).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (32, 32)


def test_a_study_still_being_written_is_read(run_dir):
    """A RUNNING trial (a live search) shows up in the table without breaking the report."""
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run_dir / 'study.db'}")
    live = study.ask()
    live.report(0.5, 1)
    partial = run_dir / "trials" / f".{live.number:04d}.tmp123"
    (partial / "samples").mkdir(parents=True)
    (run_dir / "trials" / "0000" / "samples" / "epoch-0001").rename(partial / "samples" / "epoch-0001")
    html = build_report(run_dir).path.read_text()
    assert ">running<" in html
    running = html.split(f'id="trial-{live.number}"')[1].split("</details>")[0]
    assert running.count('class="sample"') == 4


def test_best_trial_shows_its_whole_training_config(run_dir):
    summary = build_report(run_dir).path.read_text().split('id="summary"')[1].split("</section>")[0]
    assert "#4 <span class='state-COMPLETE'>(complete)</span>" in summary
    config = summary.split("id='best-config'")[1].split("</table>")[0]
    cells = re.findall(r"<tr><td>([^<]+)</td><td>(.*?)</td></tr>", config)
    names = [name for name, _ in cells]
    # The settings people look for first, in that order, then the rest; the searched ones marked.
    assert names[:7] == ["optimizer", "learning_rate", "rank", "alpha", "batch_size", "epochs", "resolution"]
    values = dict(cells)
    assert values["optimizer"] == "adamw" and values["batch_size"] == "2" and values["resolution"] == "512"
    assert values["alpha"].startswith(values["rank"].split("</b>")[0].removeprefix("<b>")) and "(= rank)" in values["alpha"]
    assert "searched" in values["rank"] and "searched" in values["learning_rate"] and "searched" not in values["optimizer"]
    assert values["prodigy.d_coef"] == "1"


def test_close_composites_get_the_digits_to_tell_them_apart(tmp_path):
    """Three trials that all read 0.4299 at 4 digits: 5 digits separate two of them, the exact tie says so."""
    run = tmp_path / "run"
    run.mkdir()
    study = optuna.create_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}", direction="maximize")
    for value in (0.42991, 0.42994, 0.42994):
        trial = study.ask()
        trial.report(value, 1)
        trial.set_user_attr("best_epoch", 1)
        trial.set_user_attr("composite", value)
        trial.set_user_attr("lora", "lora.safetensors")  # a candidate of the search's ranking
        study.tell(trial, value)
    table = build_report(run).path.read_text().split('id="trial-table"')[1].split("</table>")[0]
    cells = re.findall(r'<tr(?: class="best-row")?><td class=.num.>\d</td><td>#\d</td><td>-</td><td class=.state-COMPLETE.>complete</td>'
                       r'<td class="num">([\d.]+) ?(<span class="tie")?', table)
    assert cells == [("0.42994", '<span class="tie"'), ("0.42994", '<span class="tie"'), ("0.42991", "")]


def test_loss_per_trial_is_plotted_from_the_train_logs(run_dir):
    """Each trained trial's train_log.jsonl (its torn last line skipped) becomes a loss curve in the report."""
    run = load_run(run_dir)
    losses = {t.number: t.losses for t in run.trials}
    assert [s for s, _ in losses[4]] == list(range(1, 16)) and losses[2][-1][0] == 5  # pruned after epoch 1
    assert losses[4][0] == (1, pytest.approx(0.275)) and losses[5] == []  # the ensemble trains nothing
    html = build_report(run_dir).path.read_text()
    plot = html.split('id="plot-loss"')[1].split("</script>")[0]
    for number, phase in [(0, "baseline"), (1, "search"), (2, "search"), (3, "search"), (4, "refine")]:
        assert f'"name":"trial #{number} ({phase})"' in plot
    assert '"title":{"text":"optimizer step"}' in plot


def test_per_epoch_plot_has_a_legend_and_whole_epochs(run_dir):
    html = build_report(run_dir).path.read_text()
    plot = html.split('id="plot-intermediate"')[1].split("</script>")[0]
    assert '"showlegend":true' in plot and '"tickvals":[1,2,3]' in plot and '"title":{"text":"epoch"}' in plot
    assert '"name":"trial #2 (search) pruned"' in plot and '"name":"trial #4 (refine)"' in plot
    # the trial with recorded standard errors gets error bars of exactly those, the others none
    assert plot.count('"error_y":{"array"') == 1 and '"error_y":{"array":[0.01,0.02,0.03]' in plot
