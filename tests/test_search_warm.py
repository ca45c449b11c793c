"""Warm start (``loratune.search.warm``): an earlier run's trials seed a new study — its best settings tried first,
its outcomes as ranks the sampler learns from — without entering the new study's budget, RUN/best or report as
trials; bad sources are one line."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from loratune.cli import main
from loratune.config import load_config, validate_config
from loratune.report import build_report
from loratune.search.config import default_space
from loratune.search.runner import run_optimize
from loratune.search.samplers import make_sampler
from loratune.search.warm import express, warm_trials

BACKEND = "loratune.search.synthetic:make"
COMMON = ["search.phases.ensemble_top_k=0", "train.epochs=4", "search.heartbeat_interval=60", "search.finalists=0"]


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished 8-trial run on the synthetic surface."""
    run = tmp_path_factory.mktemp("warm") / "source"
    run_optimize(load_config(None, [*COMMON, "search.n_trials=8"]), run, backend=BACKEND, say=lambda line: None)
    return run


def test_the_best_earlier_settings_run_first_and_the_budget_counts_this_runs_trials_only(source, tmp_path) -> None:
    lines: list[str] = []
    config = load_config(None, [*COMMON, "search.n_trials=8", "search.seed=5", f"search.warm_start=[{source}]"])
    run_optimize(config, tmp_path / "run", backend=BACKEND, say=lines.append)
    earlier = sorted((t for t in _study(source).trials if t.user_attrs.get("composite") is not None),
                     key=lambda t: -t.user_attrs["composite"])
    trials = _study(tmp_path / "run").trials
    assert [t.params for t in trials[:2]] == [earlier[0].params, earlier[1].params]
    assert [t.user_attrs["warm_from"] for t in trials[:2]] == [f"source trial {t.number}" for t in earlier[:2]]
    # Then the baseline, the search phase's last slot (8 trials: 1 baseline, 3 search, 4 refine), the refinement.
    assert [t.user_attrs["phase"] for t in trials] == ["search", "search", "baseline", "search", *["refine"] * 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    record = _study(tmp_path / "run").user_attrs["warm_start"]
    assert record["sources"][0]["run"] == str(source) and record["sources"][0]["used"] == 8
    assert sorted(r["quantile"] for r in record["rows"]) == pytest.approx([(i + 0.5) / 8 for i in range(8)])
    assert any("warm start: 8 of 8 trials of" in line for line in lines)
    # RUN/best is one of this run's own trials; the report names the source run.
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert 0 <= best["trial"] < 8
    html = build_report(tmp_path / "run").path.read_text()
    assert "id='warm-sources'" in html and str(source) in html


def test_the_sampler_learns_from_the_earlier_run_on_its_own_scale(source, tmp_path) -> None:
    """TPE's first model-based suggestions follow the earlier run's best region: with the warm trials in its view it
    is past its random start-up at once."""
    space = default_space()
    config = load_config(None, [*COMMON, "search.n_trials=6", f"search.warm_start=[{source}]"])
    run_optimize(config, tmp_path / "run", backend=BACKEND, say=lambda line: None)
    study = _study(tmp_path / "run")
    warm = warm_trials(study, space)
    assert len(warm) == 8 and all(t.number < 0 and t.state == TrialState.COMPLETE for t in warm)
    sampler = make_sampler(config.search, "search", 6, n_startup=3, warm=warm)
    view = sampler._view(study)._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    own = [t for t in view if t.number >= 0]
    # This run's trials are shown at their quantile among themselves, the earlier run's at theirs.
    assert sorted(t.value for t in own) == pytest.approx([(i + 0.5) / len(own) for i in range(len(own))])
    assert {t.number for t in view if t.number < 0} == {t.number for t in warm}


def test_tpe_starts_where_the_earlier_run_did_well() -> None:
    """With an earlier run in its view TPE is past its random start-up at once, and its first suggestions follow the
    earlier run's best learning rates (1e-5..1e-2 searched; the earlier run did best near 3e-4)."""
    import math

    from loratune.search.config import ParamSpec, SearchSection
    from loratune.search.warm import quantiles

    space = {"learning_rate": ParamSpec(type="float", low=1e-5, high=1e-2, log=True)}
    lrs = [10 ** (-5 + 3 * i / 23) for i in range(24)]
    closeness = [-abs(math.log10(lr / 3e-4)) for lr in lrs]
    rows = [{"run": "earlier", "trial": i, "params": {"learning_rate": lr}, "quantile": q}
            for i, (lr, q) in enumerate(zip(lrs, quantiles(closeness)))]
    near = {True: 0, False: 0}
    for warm_started in (True, False):
        for seed in range(10):
            study = optuna.create_study(direction="maximize")
            if warm_started:
                study.set_user_attr("warm_start", {"sources": [], "rows": rows})
            search = SearchSection(space=space, seed=seed)
            tpe = make_sampler(search, "search", 0, n_startup=3, warm=warm_trials(study, space))
            study.sampler = tpe
            lr = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}).params[
                "learning_rate"]
            near[warm_started] += abs(math.log10(lr / 3e-4)) < 0.3
    assert near[True] >= 7 and near[False] <= 4, near  # a random draw lands within 0.3 decades 1 time in 5


def test_settings_the_new_space_cannot_express_are_skipped_with_the_reason() -> None:
    space = default_space()
    params, why = express(validate_config({"train": {"rank": 128, "learning_rate": 1e-4}}), space)
    assert params is None and why == "rank 128 is not among the choices [8, 16, 32, 64]"
    params, why = express(validate_config({"train": {"rank": 16, "learning_rate": 5e-3}}), space)
    assert params is None and why == "learning_rate 0.005 is outside 5e-05..0.0005"
    # Lion's learning rate is searched before its 0.3 scale: the earlier trial's 6e-5 was a suggestion of 2e-4.
    params, _ = express(validate_config({"train": {"rank": 16, "learning_rate": 6e-5, "optimizer": "lion",
                                                   "alpha": 8}}), space)
    assert params is not None and params["learning_rate"] == pytest.approx(2e-4) and params["alpha_ratio"] == 0.5
    assert "d_coef" not in params  # inactive for lion


def test_a_narrower_space_skips_what_falls_outside_and_says_so(source, tmp_path) -> None:
    ranks = sorted({t.params["rank"] for t in _study(source).trials})
    keep = ranks[:1]
    config = load_config(None, [*COMMON, "search.n_trials=3", f"search.warm_start=[{source}]"])
    space = config.search.space | {"rank": config.search.space["rank"].model_copy(update={"choices": keep})}
    config = config.model_copy(update={"search": config.search.model_copy(update={"space": space})})
    lines: list[str] = []
    run_optimize(config, tmp_path / "run", backend=BACKEND, say=lines.append)
    record = _study(tmp_path / "run").user_attrs["warm_start"]
    skipped = record["sources"][0]["skipped"]
    assert skipped and all(why.startswith("rank ") for why in skipped)
    assert all(r["params"]["rank"] in keep for r in record["rows"])
    assert record["sources"][0]["used"] + sum(skipped.values()) == 8
    assert any("skipped: rank" in line for line in lines)


def test_bad_warm_start_sources_are_one_line(source, tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("search: {n_trials: 2}\n")
    assert main(["optimize", str(config), "--run", str(tmp_path / "run"), "--warm-start", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a loratune run" in err, err
    assert not (tmp_path / "run" / "config.yaml").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: {family: sdxl}\n")
    assert main(["optimize", str(config), "--run", str(tmp_path / "run"), "--warm-start", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a sdxl run; this run trains sd15" in err, err
    assert main(["optimize", "--resume", "--run", str(source), "--warm-start", str(source)]) == 2
    assert "only when a run starts" in capsys.readouterr().err
