"""The report's known-truth section: on a run whose base model is a world folder's, the oracle judges every sampled
epoch from its pixels; on any other run there is no section."""

from __future__ import annotations

import json
import re

from PIL import Image
from report_run import make_run

from loratune.report.oracle_section import oracle_rows, oracle_section, spearman
from loratune.report.page import rank_trials
from loratune.report.rundir import load_run
from loratune.world.folder import MARKER, find_world
from loratune.world.scene import CHARACTERS, SCENES, caption, render, sample_jitters


def _draw_target(folder, scenes: list[str]) -> None:
    """Replace a sample folder's images with world renders of the target in ``scenes`` (prompts to match)."""
    rows = []
    for i, (name, jitter) in enumerate(zip(scenes, sample_jitters(7, len(scenes)))):
        image, _ = render(CHARACTERS["lucaboy"], SCENES[name], jitter)
        Image.fromarray(image).save(folder / f"w{i}.png")
        prompt = caption(CHARACTERS["lucaboy"], SCENES[name], "standing", describe=False)
        rows.append({"file": f"w{i}.png", "prompt": prompt, "seed": i, "character": "lucaboy"})
    for old in folder.glob("p*.png"):
        old.unlink()
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _world_run(tmp_path):
    run = make_run(tmp_path / "run", stand_in=False)
    (tmp_path / MARKER).write_text(json.dumps({"target": "lucaboy"}))  # the run's base model is <world>/models/sd15
    return run


def test_no_section_without_a_world(tmp_path):
    data = load_run(make_run(tmp_path / "run"))
    assert find_world(data.base_model) is None
    assert oracle_section(data, (4, 2)) == ""


def test_oracle_judges_every_sampled_epoch(tmp_path):
    run = _world_run(tmp_path)
    scenes = list(SCENES)
    _draw_target(run / "trials" / "0004" / "samples" / "epoch-0002", scenes)  # the best trial's best epoch
    data = load_run(run)
    rows = oracle_rows(data, "lucaboy")
    by_key = {(r.trial, r.epoch): r for r in rows}
    # The base model row first, then every trial's sampled epochs (3 + 3 + 1 pruned + 3 failed + 3 + the merge).
    assert rows[0].trial is None and len(rows) == 1 + 3 + 3 + 1 + 3 + 3 + 1
    drawn = by_key[4, 2]
    assert (drawn.identity, drawn.scene, drawn.best) == (1.0, 1.0, True)
    # The report's placeholder ellipses on flat colour: the target is nowhere else.
    assert all(r.identity == 0.0 for r in rows if (r.trial, r.epoch) != (4, 2))
    # Composites come from each trial's per-epoch scores.
    scores = json.loads((run / "trials" / "0004" / "scores.json").read_text())
    assert drawn.composite == next(e["composite"] for e in scores["epochs"] if e["epoch"] == 2)
    assert spearman(rows) is not None


def test_section_headline_and_table(tmp_path):
    run = _world_run(tmp_path)
    _draw_target(run / "trials" / "0004" / "samples" / "epoch-0002", list(SCENES))
    data = load_run(run)
    best = rank_trials(data)[0]
    html = oracle_section(data, (best.number, best.best_epoch))  # what RUN/best holds: best.json's trial and epoch
    assert (best.number, best.best_epoch) == (4, 2) and 'id="oracle"' in html
    headline = re.search(r"id='oracle-headline'.*?</table>", html, re.DOTALL).group(0)
    assert "base model, no LoRA" in headline and "baseline trial #0" in headline
    assert re.search(r"RUN/best: trial #4, epoch 2</td><td class='num'>1\.00</td>", headline)
    assert html.count("<tr") - headline.count("<tr") - 1 == 15  # the per-epoch table: a row per judged epoch
    # The world marker makes the models inside the world folder "world-trained" for the banner (this run's scores
    # name its base model's folder as the clipscore model too).
    assert data.world_notes == [f"base model {data.base_model}", f"alignment: clipscore ({data.base_model})"]
