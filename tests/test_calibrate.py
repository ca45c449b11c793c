"""``loratune calibrate``: the Bradley–Terry fit, the active pairs, the answers file, the server surviving a kill, and
``--apply`` re-ranking a real run directory. The page in a browser: test_calibrate_browser.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from calibrate_run import AXES, TASTE, cosine, make_calibration_run, taste_answer
from conftest import sigint_default

from loratune.calibrate.fit import Comparison, composites, fit_weights
from loratune.calibrate.pairs import next_pair
from loratune.calibrate.preferences import read_answers
from loratune.calibrate.session import Session
from loratune.cli import main
from loratune.config import SEED_WEIGHTS, load_config
from loratune.errors import LoratuneError

REPO = Path(__file__).resolve().parents[1]


def _answer(session: Session, user) -> None:
    pair = session.state()["pair"]
    left, right = (session.candidates.checkpoints[session.candidates.index(pair[s])] for s in ("left", "right"))
    session.answer(pair["left"], pair["right"], user(left.axes, right.axes))


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A run and a session answered 40 times by the taste user; the weights after 10, 30 and 40 answers."""
    run = make_calibration_run(tmp_path_factory.mktemp("calib") / "run")
    session = Session(run, who="sim")
    seen = {}
    for n in range(1, 41):
        _answer(session, taste_answer)
        if n in (10, 30, 40):
            seen[n] = (session.state()["weights"], session.held_out)
    return run, session, seen


def test_taste_is_recovered_from_30_answers(taught):
    _, _, seen = taught
    weights, held = seen[30]
    assert cosine(SEED_WEIGHTS) < 0.75  # the run's weights are far from the taste
    assert cosine(weights) >= 0.9
    assert abs(sum(weights.values()) - 1) < 1e-3 and min(weights.values()) >= 0
    assert held.answers == 30 and held.fitted > held.default


def test_prior_strength_moves_a_little_then_a_lot(taught):
    """10 answers go less than a quarter of the way from the run's weights to the taste, 40 more than 40%."""
    _, _, seen = taught
    start, goal = np.array([SEED_WEIGHTS[a] for a in AXES]), np.array([TASTE.get(a, 0.0) for a in AXES])

    def way(n: int) -> float:
        w = np.array([seen[n][0][a] for a in AXES])
        return 1 - np.linalg.norm(w - goal) / np.linalg.norm(start - goal)

    assert 0.05 < way(10) < 0.25
    assert way(30) < way(40)
    assert way(40) > 0.4


def test_pairs_are_never_asked_twice(taught):
    _, session, _ = taught
    pairs = [frozenset((a.left, a.right)) for a in session.answers]
    assert len(set(pairs)) == len(pairs) == 40
    s = np.array([[0.2, 0.8], [0.8, 0.2], [0.5, 0.5]])
    asked = []
    while (pair := next_pair(s, np.array([0.5, 0.5]), asked, np.random.default_rng(0))) is not None:
        asked.append(pair)
    assert sorted(tuple(sorted(p)) for p in asked) == [(0, 1), (0, 2), (1, 2)]


def test_random_answers_move_the_weights_little(tmp_path):
    run = make_calibration_run(tmp_path / "run")
    session = Session(run, who="coin")
    rng = np.random.default_rng(7)
    for _ in range(30):
        _answer(session, lambda left, right: str(rng.choice(["left", "right", "tie"])))
    moved = {a: abs(w - SEED_WEIGHTS[a]) for a, w in session.state()["weights"].items()}
    assert max(moved.values()) <= 0.1, moved


def test_fit_keeps_weights_a_distribution():
    scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5], [0.5, 0.5, np.nan]])
    prior = np.array([0.5, 0.5, 0.0])
    assert fit_weights(scores, [], prior).tolist() == [0.5, 0.5, 0.0]
    w = fit_weights(scores, [Comparison(0, 1, 1.0)] * 20 + [Comparison(2, 1, 1.0)] * 20, prior)
    assert w[2] == 0.0 and w[0] > 0.6 and abs(w.sum() - 1) < 1e-12  # an axis the user left out stays out
    # Missing axes are left out of a composite, never counted as 0.
    assert composites(scores, np.array([0.5, 0.5, 0.0]))[2] == 0.5
    # "Can't tell" pulls the two composites together rather than apart.
    tie = fit_weights(scores[:, :2], [Comparison(0, 1, 0.5)] * 40, np.array([0.8, 0.2]))
    assert abs(tie[0] - 0.5) < abs(0.8 - 0.5)


def test_answers_resume_and_a_torn_line_is_skipped(tmp_path):
    run = make_calibration_run(tmp_path / "run", trials=4)
    session = Session(run, who="me")
    for _ in range(3):
        _answer(session, taste_answer)
    with open(session.path, "a") as fh:
        fh.write('{"who": "me", "pair": {"left": {"tri')  # a crash mid-write
    again = Session(run, who="me")
    assert [(a.left, a.right, a.answer) for a in again.answers] == [(a.left, a.right, a.answer) for a in session.answers]
    row = json.loads(session.path.read_text().splitlines()[0])
    assert set(row) == {"who", "when", "pair", "answer"} and row["who"] == "me"
    asked = {frozenset((a.left, a.right)) for a in again.answers}
    assert frozenset((again.state()["pair"]["left"], again.state()["pair"]["right"])) not in asked
    with pytest.raises(LoratuneError, match="not the pair being asked"):
        again.answer("0/1", "0/2", "left")


def test_killed_server_loses_no_answer(tmp_path):
    run = make_calibration_run(tmp_path / "run", trials=4)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def start() -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([sys.executable, "-m", "loratune.cli", "calibrate", str(run), "--port", "0",
                                 "--who", "kill"], stdout=subprocess.PIPE, text=True, env=env,
                                preexec_fn=sigint_default)  # noqa: PLW1509  no Popen option resets SIGINT
        line = proc.stdout.readline()
        assert line.startswith("calibrate: http://127.0.0.1:"), line
        return proc, line.split()[1]

    def call(url: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    proc, url = start()
    try:
        state = call(url + "api/state")
        for answer in ("left", "right", "tie"):
            pair = state["pair"]
            state = call(url + "api/answer", {"left": pair["left"], "right": pair["right"], "answer": answer})
        assert state["answered"] == 3
        with urllib.request.urlopen(url + "image/0/0", timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [a.answer for a in read_answers(run / "preferences.jsonl")] == ["left", "right", "tie"]
    proc, url = start()
    try:
        assert call(url + "api/state")["answered"] == 3
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop that says where the answers are
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped; 3 answers in" in out


def test_apply_reranks_the_run(taught, capsys):
    run, session, _ = taught
    assert main(["calibrate", str(run), "--apply"]) == 0
    out = capsys.readouterr().out
    assert "40 answers" in out and "report:" in out
    calibration = json.loads((run / "calibration.json").read_text())
    top = calibration["ranking"][0]
    assert calibration["answers"] == 40 and calibration["weights"] == session.state()["weights"]
    # The search's own ranking is kept beside it: every trial by its recorded best composite.
    recorded = {int(p.parent.name): json.loads(p.read_text())["composite"] for p in run.glob("trials/*/scores.json")}
    assert [r["trial"] for r in calibration["ranking_default"]] == sorted(recorded, key=lambda t: -recorded[t])
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"]) == (top["trial"], top["epoch"])
    assert (run / "best" / "lora.safetensors").read_bytes() == f"{top['trial']}/{top['epoch']}".encode()
    # The snippet is a valid config: the next study runs with the calibrated weights.
    config = load_config(run / "calibrated-weights.yaml")
    assert config.evaluation.weights == pytest.approx(calibration["weights"])
    # The taste puts another trial first: the report shows both rankings side by side.
    assert top["trial"] != calibration["ranking_default"][0]["trial"] and "the ranking changed" in out
    html = (run / "report.html").read_text()
    assert "Calibrated ranking" in html and "id='calibrated-ranking'" in html
    assert "RUN/best by your taste (calibrated)" in html  # the summary names what RUN/best now holds


def test_a_resumed_search_keeps_the_calibrated_best(taught):
    """``optimize --resume`` ends in ``finish_run``: RUN/best stays the calibrated winner, not the search's."""
    from loratune.calibrate.apply import apply_calibration
    from loratune.search.runner import finish_run

    run, _, _ = taught
    top = apply_calibration(run).best
    own = json.loads((run / "calibration.json").read_text())["ranking_default"][0]
    said: list[str] = []
    best_trial = finish_run(run, load_config(run / "config.yaml"), said.append)
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"]) == (top["trial"], top["epoch"]) and best_trial.number == top["trial"]
    assert own["trial"] != top["trial"] and best["calibrated"]["answers"] == 40
    assert f"RUN/best by your taste (calibrated weights, 40 answers): trial {top['trial']}" in said[-1]
    assert f"the search's own winner is trial {own['trial']} epoch {own['epoch']}" in said[-1]


def test_apply_without_answers_and_a_non_run_are_one_line_errors(tmp_path, capsys):
    run = make_calibration_run(tmp_path / "run", trials=2, epochs=1)
    assert main(["calibrate", str(run), "--apply"]) == 2
    assert "no answers yet" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
