"""The calibration page in headless Chromium, keyboard only: a simulated user whose hidden taste is identity
(consistency) 0.7 / alignment 0.3 answers 30 pairs; the page's fitted weights recover the taste and beat the run's
weights on held-out answers. The page loads nothing from outside the local server. Saves the README's screenshot
to $LORATUNE_SCREENSHOT_DIR/calibrate.png when set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from calibrate_run import cosine, make_calibration_run, taste_answer
from test_browser import _wait_for, browser, pytestmark  # noqa: F401 - the shared Chromium fixture and its skip

REPO = Path(__file__).resolve().parents[1]


def _axes(run: Path, key: str) -> dict[str, float | None]:
    trial, epoch = (int(x) for x in key.split("/"))
    rows = json.loads((run / "trials" / f"{trial:04d}" / "scores.json").read_text())["epochs"]
    return next(r["axes"] for r in rows if r["epoch"] == epoch)


def test_a_simulated_user_teaches_its_taste_by_keyboard(browser, tmp_path):  # noqa: F811 - the imported fixture
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    run = make_calibration_run(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "loratune.cli", "calibrate", str(run), "--port", "0", "--who",
                             "sim"], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        url = proc.stdout.readline().split()[1]
        assert url.startswith("http://127.0.0.1:")
        browser.set_window_size(1280, 900)
        browser.get(url)
        keys = {"left": Keys.ARROW_LEFT, "right": Keys.ARROW_RIGHT, "tie": Keys.ARROW_DOWN}
        for n in range(30):
            _wait_for(browser, f"return document.body.dataset.answered === '{n}' && document.body.dataset.busy === '0'")
            left, right = (browser.find_element("id", side).get_attribute("data-key") for side in ("left", "right"))
            answer = taste_answer(_axes(run, left), _axes(run, right))
            if n == 0:  # the buttons are reachable with Tab and pressed with Enter
                tabs = {"left": 1, "tie": 2, "right": 3}[answer]
                ActionChains(browser).send_keys(Keys.TAB * tabs + Keys.ENTER).perform()
                assert browser.switch_to.active_element.get_attribute("data-answer") == answer
            else:
                ActionChains(browser).send_keys(keys[answer]).perform()
        _wait_for(browser, "return document.body.dataset.answered === '30' && document.body.dataset.busy === '0'")

        weights = browser.execute_script("""return Object.fromEntries([...document.querySelectorAll('tr[data-axis]')]
            .map(r => [r.dataset.axis, parseFloat(r.dataset.weight)]))""")
        assert cosine(weights) >= 0.9, weights
        with urllib.request.urlopen(url + "api/state", timeout=30) as response:
            agreement = json.loads(response.read())["agreement"]
        assert agreement["answers"] == 30 and agreement["fitted"] > agreement["default"], agreement
        assert "your weights agree with you" in browser.find_element("id", "agreement").text
        assert len(browser.find_elements("css selector", "#top li")) == 5
        answers = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines()]
        assert len(answers) == 30 and {a["who"] for a in answers} == {"sim"}

        # Same prompts and seeds on both sides, every image decoded; nothing fetched from outside the server.
        sizes = _wait_for(browser, """const imgs = [...document.querySelectorAll('#pair img')];
            return imgs.length && imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : false;""")
        assert sizes == [64] * 8
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(f.startswith(url) for f in fetched), fetched
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []

        shot = tmp_path / "calibrate.png"
        browser.save_screenshot(str(shot))
        Image.open(shot).convert("RGB").quantize(64).save(shot, optimize=True)  # small enough to commit
        assert 10_000 < shot.stat().st_size < 200_000
        extra = os.environ.get("LORATUNE_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            (Path(extra) / "calibrate.png").write_bytes(shot.read_bytes())
    finally:
        proc.terminate()
        proc.wait()
