"""The study runner's mechanics with a synthetic trial backend (tests/search_helpers.py): phases, run directory,
failures, SIGKILL + resume, two workers. The end-to-end search on the real trainer is tests/test_search_e2e.py."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import sigint_default
from optuna.trial import TrialState

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.search.config import SearchSection
from loratune.search.phases import Plan, assign_phase, counted, next_action, refine_space
from loratune.search.runner import run_optimize
from loratune.search.space import distribution

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BACKEND = "search_helpers:make"


def write_config(path: Path, **search) -> Path:
    data = {
        "train": {"epochs": 3},
        "search": {
            "n_trials": 6, "seed": 3, "heartbeat_interval": 1, "grace_period": 2, "pruner": "hyperband",
            "space": {"learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True},
                      "rank": {"type": "categorical", "choices": [4, 8, 16]},
                      "alpha_ratio": {"type": "categorical", "choices": [0.5, 1.0]},
                      "epochs": {"type": "int", "low": 2, "high": 3}},
            "phases": {"refine_trials": 2, "ensemble_top_k": 2},
            **search,
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _backend_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def test_plan_and_phase_assignment() -> None:
    config = load_config()
    plan = Plan.of(config.search.model_copy(update={"n_trials": 6}))
    assert (plan.baseline, plan.search, plan.refine, plan.ensemble) == (1, 1, 4, True)
    plan = Plan(1, 3, 2, True)

    def trial(n: int, phase: str, state=TrialState.COMPLETE, reason=None):
        attrs = {"phase": phase} | ({"fail_reason": reason} if reason else {})
        return optuna.trial.FrozenTrial(number=n, state=state, value=None, datetime_start=None, datetime_complete=None,
                                        params={}, distributions={}, user_attrs=attrs, system_attrs={},
                                        intermediate_values={}, trial_id=n)

    trials = [trial(0, "baseline"), trial(1, "search"), trial(2, "search", TrialState.FAIL),  # crashed: retried
              trial(3, "search", TrialState.FAIL, "diverged: nan")]
    assert [counted(t) for t in trials] == [True, True, False, True]
    assert assign_phase(trials, 4, plan) == "search"  # the crashed trial's slot is still open
    trials.append(trial(4, "search"))
    assert assign_phase(trials, 5, plan) == "refine"
    trials += [trial(5, "refine"), trial(6, "refine")]
    assert assign_phase(trials, 7, plan) == "ensemble"
    assert assign_phase(trials + [trial(7, "ensemble")], 8, plan) == "surplus"


def test_refine_moves_one_categorical_of_the_best_to_a_neighbour() -> None:
    search = load_config(None, ["search.n_trials=6", "search.seed=3"]).search
    dists = {name: distribution(spec) for name, spec in search.space.items()}
    best = {"learning_rate": 1e-4, "rank": 32, "alpha_ratio": 1.0, "optimizer": "adamw", "min_snr_gamma": None}

    def trial(n: int, phase: str, composite: float, **change):
        params = best | change
        return optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=composite, params=params, distributions={k: dists[k] for k in params},
            user_attrs={"phase": phase, "composite": composite, "lora": f"{n}.safetensors"})

    trials = [trial(0, "baseline", 0.5, rank=8), trial(1, "search", 0.7)]
    for n, t in enumerate(trials):
        t.number = n
    # Refine trial 0 (number 2) keeps the best's choices, as without moves.
    assert refine_space(trials, search, 2)[1] == {k: v for k, v in best.items() if k != "learning_rate"}
    trials.append(trial(2, "refine", 0.6))
    trials[-1].number = 2
    pinned = search.model_copy(update={"phases": search.phases.model_copy(update={"refine_moves": False})})
    assert refine_space(trials, pinned, 3)[1] == refine_space(trials, search, 2)[1]  # moves off: always pinned
    # Every later refine trial changes exactly one categorical, to a neighbour: rank 16 or 64 (not 8), alpha 0.5,
    # another optimizer, min-SNR on; the same (seed, number) always picks the same move.
    changes = []
    for number in range(3, 6):
        fixed = refine_space(trials, search, number)[1]
        assert fixed == refine_space(list(reversed(trials)), search, number)[1]
        (moved,) = [(k, v) for k, v in fixed.items() if v != best[k]]
        assert moved in {("rank", 16), ("rank", 64), ("alpha_ratio", 0.5), ("optimizer", "prodigy"),
                         ("optimizer", "lion"), ("min_snr_gamma", 5.0)}
        changes.append(moved)
        trials.append(trial(number, "refine", 0.6, **dict([moved])))
        trials[-1].number = number
    assert len(set(changes)) == 3  # a move an earlier refine trial ran is not taken again
    assert changes == [("rank", 64), ("min_snr_gamma", 5.0), ("alpha_ratio", 0.5)]  # seed 3, trials 3-5
    for number, moved in enumerate([("rank", 16), ("optimizer", "prodigy")], start=6):
        trials.append(trial(number, "refine", 0.6, **dict([moved])))
        trials[-1].number = number
    # One move left: it is the one taken, whatever the seed; once every move ran, the best's choices again.
    assert refine_space(trials, search, 8)[1]["optimizer"] == "lion"
    trials.append(trial(8, "refine", 0.6, optimizer="lion"))
    trials[-1].number = 8
    assert refine_space(trials, search, 9)[1] == refine_space(trials, search, 2)[1]


def test_three_phases_prune_and_best(tmp_path) -> None:
    run = tmp_path / "run"
    best = run_optimize(load_config(write_config(tmp_path / "c.yaml")), run, backend=BACKEND, say=lambda m: None)
    trials = study(run).get_trials()
    phases = [t.user_attrs["phase"] for t in trials]
    assert phases[0] == "baseline" and trials[0].params["learning_rate"] == pytest.approx(1e-4)
    assert phases.count("search") == 3 and phases.count("refine") == 2 and phases[-1] == "ensemble"
    assert any(t.state == TrialState.PRUNED for t in trials)
    for t in trials:
        folder = run / t.user_attrs["trial_dir"]
        assert (folder / "params.json").is_file() and (folder / "scores.json").is_file() and (folder / "log.txt").is_file()
        if t.state == TrialState.COMPLETE and t.user_attrs["phase"] != "ensemble":
            assert t.value == pytest.approx(max(e["composite"] for e in yaml.safe_load((folder / "scores.json").read_text())["epochs"]))
    refine = [t for t in trials if t.user_attrs["phase"] == "refine"]
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["phase"] != "ensemble"
                     and t.number < refine[0].number), key=lambda t: t.value, reverse=True)
    assert refine[0].params["rank"] == ranked[0].params["rank"]  # categoricals fixed at the best so far
    ensemble = trials[-1]
    assert ensemble.user_attrs["members"] == [t.number for t in sorted(
        (t for t in trials[:-1] if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)][:2]
    assert best is not None and (run / "best" / "best.json").is_file()
    assert yaml.safe_load((run / "best" / "best.json").read_text())["trial"] == best.number
    assert not list((run / "trials").glob(".*"))  # no temporary folders left


def test_refuses_existing_run_and_resume_of_nothing(tmp_path) -> None:
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, phases={"refine_trials": 0, "ensemble_top_k": 0}))
    run_optimize(config, run, backend=BACKEND, say=lambda m: None)
    before = tree_digest(run / "trials")
    with pytest.raises(LoratuneError, match="--resume"):
        run_optimize(config, run, backend=BACKEND)
    assert run_optimize(None, run, resume=True, backend=BACKEND, say=lambda m: None) is not None
    assert tree_digest(run / "trials") == before
    with pytest.raises(LoratuneError, match="nothing to resume"):
        run_optimize(None, tmp_path / "empty", resume=True, backend=BACKEND)


class FailingBackend:
    """Diverges for rank 16, crashes like an external trainer for rank 4."""

    def __init__(self) -> None:
        from search_helpers import SyntheticBackend

        self.inner = SyntheticBackend()

    def train(self, config, out_dir, on_epoch):
        from loratune.train import TrainingDiverged

        if config.train.rank == 16:
            raise TrainingDiverged("training diverged at epoch 1, step 3: loss is nan")
        if config.train.rank == 4:
            raise subprocess.CalledProcessError(9, ["train_network.py"])
        self.inner.train(config, out_dir, on_epoch)

    def score_lora(self, config, lora, out_dir):
        return self.inner.score_lora(config, lora, out_dir)


def test_failed_trials_record_reason_and_study_goes_on(tmp_path) -> None:
    run = tmp_path / "run"
    # Seed 1: its six random draws have both failing ranks and no three failures in a row (which stops a run).
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=6, sampler="random", seed=1,
                                      phases={"refine_trials": 0, "ensemble_top_k": 0, "baseline": False}))
    sys.modules[__name__].make_failing = FailingBackend  # importable as test_search_runner:make_failing
    run_optimize(config, run, backend=f"{__name__}:make_failing", say=lambda m: None)
    trials = study(run).get_trials()
    reasons = {t.params["rank"]: t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL}
    # Every failed trial failed for its own rank's reason, and both kinds occurred (random sampler, seeded).
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("diverged" if t.params["rank"] == 16 else "trainer exited"), t
    assert set(reasons) == {4, 16} and any(t.state == TrialState.COMPLETE for t in trials)
    assert len(trials) == 6
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "failed:" in (run / t.user_attrs["trial_dir"] / "log.txt").read_text()


class MissingAxesBackend(FailingBackend):
    """Trains normally, but no axis can be computed at any epoch: the composite is None, never 0."""

    def train(self, config, out_dir, on_epoch):
        from loratune.records import EpochScore

        self.inner.train(config, out_dir, lambda s: on_epoch(
            EpochScore(s.epoch, None, {"alignment": None, "diversity": None}, s.lora, s.samples_dir)))


def test_every_axis_missing_fails_the_trial_with_its_reason(tmp_path) -> None:
    from loratune.search.trial import NO_COMPOSITE

    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, phases={"refine_trials": 0, "ensemble_top_k": 0}))
    sys.modules[__name__].make_missing = MissingAxesBackend
    assert run_optimize(config, run, backend=f"{__name__}:make_missing", say=lambda m: None) is None
    trials = study(run).get_trials()
    assert len(trials) == 2  # each failure holds its slot (a reasonless FAIL would count as a crash and reopen it)
    for t in trials:
        assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == NO_COMPOSITE
        assert t.intermediate_values == {}  # nothing reported to the pruner as if it were a score
        scores = yaml.safe_load((run / t.user_attrs["trial_dir"] / "scores.json").read_text())
        assert scores["composite"] is None and scores["axes"] == {"alignment": None, "diversity": None}
        assert all(e["composite"] is None for e in scores["epochs"])
    assert not (run / "best").exists()


class MixedRankBackend(FailingBackend):
    """Trial N writes rank-(2 + N % 2) LoRAs: consecutive trials cannot be parameter-averaged."""

    def __init__(self) -> None:
        super().__init__()
        write = self.inner._lora
        self.inner._lora = lambda path, seed, rank: write(path, seed, 2 + (seed // 100) % 2)

    def train(self, config, out_dir, on_epoch):
        self.inner.train(config, out_dir, on_epoch)


def test_an_ensemble_that_cannot_merge_fails_alone(tmp_path) -> None:
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, pruner="none",
                                      phases={"refine_trials": 0, "ensemble_top_k": 2, "ensemble_method": "avg"}))
    sys.modules[__name__].make_mixed = MixedRankBackend
    best = run_optimize(config, run, backend=f"{__name__}:make_mixed", say=lambda m: None)
    trials = study(run).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[2].user_attrs["phase"] == "ensemble" and "equal ranks" in trials[2].user_attrs["fail_reason"]
    assert best is not None and best.number in (0, 1) and (run / "best" / "best.json").is_file()


def test_multi_objective_turns_pruning_off(tmp_path) -> None:
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=4, directions={"alignment": "maximize",
                                                                                   "diversity": "maximize"}))
    best = run_optimize(config, run, backend=BACKEND, say=lambda m: None)
    s = study(run)
    assert len(s.directions) == 2
    trials = s.get_trials()
    assert not any(t.state == TrialState.PRUNED for t in trials) and all(t.intermediate_values == {} for t in trials)
    assert best is not None and len(best.values) == 2 and s.best_trials


def _run_script(run: Path, config: Path) -> str:
    return (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from loratune.config import load_config\nfrom loratune.search.runner import run_optimize\n"
            f"run_optimize(load_config({str(config)!r}), {str(run)!r}, backend={BACKEND!r})\n")


def _start_until(script: str, markers: Path, pattern: str, timeout: float = 120) -> subprocess.Popen:
    """Start the optimizer script in a child process and return once the synthetic backend has touched ``pattern``
    (a trial's epoch has begun): the moment to kill or interrupt it."""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL, preexec_fn=sigint_default)  # noqa: PLW1509  no Popen option resets SIGINT
    deadline = time.monotonic() + timeout
    while not list(markers.glob(pattern)):
        if proc.poll() is not None or time.monotonic() > deadline:
            exited = proc.poll()
            proc.kill()
            proc.wait()
            pytest.fail(f"the optimizer {'exited with ' + str(exited) if exited is not None else 'timed out'} "
                        f"before {pattern}")
        time.sleep(0.05)
    return proc


def test_sigkill_mid_trial_then_resume(tmp_path, monkeypatch) -> None:
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    config = write_config(tmp_path / "c.yaml", n_trials=5, phases={"refine_trials": 1, "ensemble_top_k": 0})
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0.3")
    monkeypatch.setenv("LORATUNE_TEST_MARKERS", str(markers))
    proc = _start_until(_run_script(run, config), markers, "0002-epoch2-*")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = study(run).get_trials()
    # Killed during trial 2's second epoch: trials 0 and 1 had finished (either may have been pruned).
    assert [t.state.is_finished() for t in before[:2]] == [True, True] and before[2].state == TrialState.RUNNING
    finished = {t.number: (t.state, t.values, tree_digest(run / t.user_attrs["trial_dir"]))
                for t in before if t.state.is_finished()}
    assert len(finished) == 2 and not (run / "trials" / "0002").exists()

    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0")
    run_optimize(None, run, resume=True, backend=BACKEND, say=lambda m: None)
    after = study(run).get_trials()
    for number, (state, values, digest) in finished.items():
        assert after[number].state == state and after[number].values == values
        assert tree_digest(run / after[number].user_attrs["trial_dir"]) == digest
    assert after[2].state == TrialState.FAIL
    retries = [t for t in after if t.user_attrs.get("retry_of") == 2]
    assert len(retries) == 1 and retries[0].params == before[2].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sum(1 for t in after if counted(t)) == 5
    assert list((run / "trials" / "partial").iterdir())  # the killed trial's partial folder, set aside


def test_two_workers_share_one_study_without_duplicates(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0.2")
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=8, phases={"refine_trials": 2, "ensemble_top_k": 2}))
    run_optimize(config, run, workers=2, backend=BACKEND, say=lambda m: None)
    trials = study(run).get_trials()
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    assert all(t.state.is_finished() for t in trials)
    dirs = [t.user_attrs["trial_dir"] for t in trials if "trial_dir" in t.user_attrs]
    assert len(dirs) == len(set(dirs)) == len(list((run / "trials").iterdir()))
    budget = [t for t in trials if counted(t) and t.user_attrs["phase"] != "ensemble"]
    assert len(budget) == 8
    params = [tuple(sorted(t.params.items())) for t in budget]
    assert len(params) == len(set(params))
    assert sum(1 for t in trials if t.user_attrs["phase"] == "ensemble" and t.state == TrialState.COMPLETE) == 1


def interrupt_trial(tmp_path: Path, monkeypatch, number: int, **search) -> Path:
    """A run Ctrl-C'd during trial ``number``'s second epoch (the optimizer exits 130); returns the run folder."""
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    config = write_config(tmp_path / "c.yaml", **search)
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0.3")
    monkeypatch.setenv("LORATUNE_TEST_MARKERS", str(markers))
    script = _run_script(run, config).replace("run_optimize(", "import sys\ntry:\n    run_optimize(") + \
        "except KeyboardInterrupt:\n    sys.exit(130)\n"
    proc = _start_until(script, markers, f"{number:04d}-epoch2-*")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    return run


def test_ctrl_c_stops_cleanly_and_resume_retries(tmp_path, monkeypatch) -> None:
    run = interrupt_trial(tmp_path, monkeypatch, 1, n_trials=3, phases={"refine_trials": 0, "ensemble_top_k": 0})
    trials = study(run).get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["fail_reason"] == "interrupted"
    assert not list((run / "trials").glob(".*")) and not (run / "trials" / "0001").exists()
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0")
    run_optimize(None, run, resume=True, backend=BACKEND, say=lambda m: None)
    after = study(run).get_trials()
    retries = [t for t in after if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].params == trials[1].params and retries[0].state.is_finished()
    assert retries[0].user_attrs["fail_reason"] is None  # the retry does not inherit "interrupted"
    assert sum(1 for t in after if counted(t)) == 3


def test_a_trial_without_its_phase_yet_holds_its_slot() -> None:
    """Another worker's trial between ask() and set_user_attr('phase') still counts (the two-worker race)."""
    plan = Plan(1, 1, 1, False)

    def trial(n: int, phase: str | None):
        attrs = {"phase": phase} if phase else {}
        return optuna.trial.FrozenTrial(number=n, state=TrialState.RUNNING, value=None, datetime_start=None,
                                        datetime_complete=None, params={}, distributions={}, user_attrs=attrs,
                                        system_attrs={}, intermediate_values={}, trial_id=n)

    trials = [trial(0, "baseline"), trial(1, "search"), trial(2, None)]
    assert assign_phase(trials, 3, plan) == "surplus"
    assert next_action(trials, plan, SearchSection()) == "wait"
