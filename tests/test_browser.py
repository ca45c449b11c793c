"""The report in a real browser: headless Debian chromium driven through chromedriver (selenium), fully offline.

Checks that the page runs with no console errors, that plotly drew every figure and that every sample thumbnail
decoded; saves a full-page screenshot next to the report (and to $LORATUNE_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from report_run import make_run

from loratune.report import build_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# CI must run it: there a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) and not os.environ.get("CI"),
    reason="needs Debian chromium + chromium-driver (`make test` installs them)",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Explicit driver and browser paths: selenium-manager then has nothing to download.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(driver, script: str, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))


def _screenshot(driver, report: Path) -> Path:
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    driver.set_window_size(max(1400, width), min(height + 100, 8000))
    shot = report.with_name("report-screenshot.png")
    driver.save_screenshot(str(shot))
    extra = os.environ.get("LORATUNE_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(extra) / f"{report.parent.name}-report.png")
    return shot


@pytest.mark.parametrize("multi_objective", [False, True], ids=["single", "pareto"])
def test_report_renders_in_chromium(browser, tmp_path, multi_objective):
    run = make_run(tmp_path / ("run-mo" if multi_objective else "run"), multi_objective=multi_objective)
    result = build_report(run)

    browser.get(result.path.resolve().as_uri())
    _wait_for(browser, "return document.readyState === 'complete'")
    # Every figure div that plotly fills gets the .js-plotly-plot class and an SVG canvas (.main-svg).
    plotted = _wait_for(browser, f"""
        const plots = document.querySelectorAll('.js-plotly-plot');
        const drawn = [...plots].filter(p => p.querySelector('.main-svg'));
        return drawn.length >= {result.figures} ? drawn.length : false;""")
    assert plotted == result.figures >= 4
    # No figure is drawn wider than its box (a grid that was still collapsing when plotly sized it did that once).
    widths = browser.execute_script("""return [...document.querySelectorAll('.js-plotly-plot')].map(
        p => [p.offsetWidth, parseFloat(p.querySelector('.main-svg').getAttribute('width'))]);""")
    assert all(svg <= box + 1 for box, svg in widths), widths
    assert browser.execute_script("return typeof Plotly !== 'undefined' && Plotly.version.length > 0")
    # The history plot carries one marker per completed trial.
    n_points = browser.execute_script("""
        const div = document.querySelector('.js-plotly-plot');
        return div.data.map(t => (t.x || []).length).reduce((a, b) => Math.max(a, b), 0);""")
    assert n_points >= 3

    images = _wait_for(browser, """
        const imgs = [...document.querySelectorAll('img.sample')];
        return imgs.length && imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : false;""")
    assert len(images) == result.images > 0
    assert all(w == 64 for w in images), images
    audit_thumbs = browser.execute_script(
        "return [...document.querySelectorAll('img.audit-thumb')].map(i => i.complete && i.naturalWidth)")
    assert audit_thumbs == [64, 64]
    assert browser.execute_script("return document.querySelectorAll('.epoch.best-epoch').length") >= 1
    banner = browser.find_element("id", "stand-in-warning")
    assert banner.is_displayed() and "Stand-in weights" in banner.text
    rows = browser.execute_script("return document.querySelectorAll('#trial-table tbody tr').length")
    assert rows == 6

    # Every thumbnail opens its full-size image: a link to the sample file itself, which exists.
    links = browser.execute_script("""return [...document.querySelectorAll('img.sample')].map(
        i => i.parentElement.tagName === 'A' ? i.parentElement.href : null)""")
    assert all(link and Path(unquote(urlparse(link).path)).is_file() for link in links), links[:3]
    if not multi_objective:
        # The per-trial loss curves and the per-epoch plot name their trials in a legend; epochs are whole numbers.
        loss = browser.execute_script("return document.getElementById('plot-loss').data.map(t => t.name)")
        assert "trial #4 (refine)" in loss and "trial #0 (baseline)" in loss
        ticks = browser.execute_script("""return [...document.querySelectorAll('#plot-intermediate .xtick text')]
            .map(t => t.textContent)""")
        assert ticks == ["1", "2", "3"]
        assert browser.execute_script("return document.querySelectorAll('#plot-intermediate .legend .traces').length") == 5
        assert browser.find_element("css selector", "#base-samples .label").text == "base model, no LoRA"
        assert "tie" not in browser.find_element("id", "trial-table").text  # no two composites are equal here

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    shot = _screenshot(browser, result.path)
    assert shot.stat().st_size > 10_000


def test_report_fits_an_800_pixel_window(browser, tmp_path):
    """A narrow window: the page never scrolls sideways; the wide trials table scrolls inside its own box."""
    result = build_report(make_run(tmp_path / "run"))
    browser.set_window_size(800, 1000)
    browser.get(result.path.resolve().as_uri())
    _wait_for(browser, "return document.readyState === 'complete'")
    _wait_for(browser, "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    box = browser.execute_script("""const box = document.getElementById('trial-table').parentElement;
        return [getComputedStyle(box).overflowX, box.scrollWidth, box.clientWidth,
                box.getBoundingClientRect().right <= window.innerWidth]""")
    assert box[0] == "auto" and box[1] > box[2] and box[3], box
    # One line per trial: cells do not wrap into tall rows.
    heights = browser.execute_script(
        "return [...document.querySelectorAll('#trial-table tbody tr')].map(r => r.getBoundingClientRect().height)")
    assert max(heights) < 2 * min(heights), heights
    shot = result.path.with_name("report-800.png")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(800, min(height + 100, 8000))
    browser.save_screenshot(str(shot))
    extra = os.environ.get("LORATUNE_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(extra) / "report-800.png")
    assert shot.stat().st_size > 10_000
