"""``supersub report``: one self-contained HTML page, checked as text and as a person sees it in headless Chromium.

The browser test drives Debian's ``/usr/bin/chromium`` through the ``playwright`` package (no browser download).
Without them it skips, except where ``SUPERSUB_BROWSER_TESTS=required`` (``.ci/run`` sets it) or ``CI`` is set:
there it fails, so CI always looks at the page.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli, saved_thresholds

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# an attribute or CSS url() that makes the browser fetch from the network: http(s)://, or protocol-relative //
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|srcset|poster|action|data)\s*=\s*["']?\s*|url\(\s*["']?\s*)((?:https?:)?//[^"'\s)>]*)""",
    re.IGNORECASE,
)
COMPETITION_KEYS = [f"{level}_{k}" for level in ("super", "sub") for k in
                    ("ce", "acc_overall", "acc_seen", "acc_unseen", "n_overall", "n_seen", "n_unseen")]
OPEN_SET_KEYS = [f"{level}_{k}" for level in ("super", "sub") for k in ("auroc", "fpr95", "aupr", "ece")]


def external_references(html: str) -> list[str]:
    return EXTERNAL.findall(html)


@pytest.fixture(scope="module")
def report_html(trained_run: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert run_cli(["report", str(trained_run), "--test", str(synth_dir), "--out", str(out), "--images", "6"]) == 0
    return out


def test_the_page_references_no_external_url(report_html: Path) -> None:
    html = report_html.read_text(encoding="utf-8")
    assert external_references(html) == []
    assert html.count('src="data:image/') >= 10  # the charts and thumbnails are embedded, not linked


def test_the_url_checker_finds_external_urls() -> None:
    page = ('<img src="https://cdn.example/x.png"><a href=http://example.org>x</a><link href="//fonts.example/f.css">'
            '<style>body { background: url( "https://example.org/bg.png") }</style><a href="#metrics">ok</a>'
            '<img src="data:image/png;base64,AAAA">')
    assert external_references(page) == ["https://cdn.example/x.png", "http://example.org", "//fonts.example/f.css",
                                         "https://example.org/bg.png"]


def test_an_existing_report_is_kept_without_overwrite(report_html: Path, trained_run: Path, synth_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = report_html.read_bytes()
    capsys.readouterr()
    assert run_cli(["report", str(trained_run), "--out", str(report_html)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert report_html.read_bytes() == before
    assert not [p for p in report_html.parent.iterdir() if p.name != report_html.name]  # no temporary file left


def test_without_a_labelled_folder_the_page_says_what_is_missing(trained_run: Path, tmp_path: Path) -> None:
    from supersub import api

    path = api.report(trained_run, out=tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    missing = html[html.index('id="missing"'):html.index("</div>", html.index('id="missing"'))]
    assert "--test DIR" in missing and "image grids" in missing
    assert 'data-metric="super_acc_overall"' not in html  # no metric table without labels
    assert "stage final" in html and "Configuration" in html  # what the run directory alone gives is there
    assert 'data-metric="thresholds.tau_sub"' in html
    assert external_references(html) == []


def _browser_or_skip() -> Any:
    """playwright's sync API, or skip (fail where the browser test is required) naming what is missing."""
    required = os.environ.get("SUPERSUB_BROWSER_TESTS") == "required" or \
        os.environ.get("CI", "").lower() in ("1", "true", "yes")
    reason = None
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run installs it)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = reason or "the playwright package is missing (pip install -e '.[test]')"
    if reason:
        (pytest.fail if required else pytest.skip)(f"browser test: {reason}")
    return sync_playwright


def _look_at(page_file: Path, profile: Path) -> dict[str, Any]:
    """Open the page in headless Chromium and collect what a person would see, and what went wrong."""
    sync_playwright = _browser_or_skip()
    seen: dict[str, Any] = {"console_errors": [], "page_errors": [], "requests": []}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: seen["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            seen["images"] = page.eval_on_selector_all(
                "img", "els => els.map(e => ({alt: e.alt, complete: e.complete, width: e.naturalWidth}))")
            seen["cells"] = page.eval_on_selector_all(
                "td[data-metric]", "els => Object.fromEntries(els.map(e => [e.dataset.metric, e.innerText.trim()]))")
            seen["visible_table"] = page.is_visible('td[data-metric="sub_acc_overall"]')
            seen["title"] = page.title()
        finally:
            context.close()
    return seen


def _shown(value: Any) -> Any:
    return "n/a" if value is None else value


def test_a_person_sees_the_run_metrics_and_every_image(report_html: Path, trained_run: Path, synth_dir: Path,
                                                       tmp_path: Path) -> None:
    from supersub import api

    seen = _look_at(report_html, tmp_path / "chromium-profile")
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:"))] == []
    assert seen["title"] == f"supersub report: {trained_run.name}"
    # every image decoded: charts (curves, sweeps, confusions) and thumbnails
    assert len(seen["images"]) >= 10
    assert [img["alt"] for img in seen["images"] if not (img["complete"] and img["width"] > 0)] == []
    # the metric table shows what evaluate computes on the same folder, number for number
    expected = api.evaluate(trained_run, synth_dir / "test_images", synth_dir / "test_truth.csv", save=False)
    cells = seen["cells"]
    assert seen["visible_table"]
    shown = {key: cells[key] if cells[key] == "n/a" else float(cells[key]) for key in COMPETITION_KEYS + OPEN_SET_KEYS}
    assert shown == {key: _shown(expected[key]) for key in COMPETITION_KEYS + OPEN_SET_KEYS}
    # and the training summary the numbers of metrics.json
    summary = json.loads((trained_run / "metrics.json").read_text(encoding="utf-8"))
    assert float(cells["final.val_acc_sub"]) == pytest.approx(summary["final"]["val_acc_sub"], rel=1e-5)
    thresholds = saved_thresholds(trained_run)
    assert float(cells["thresholds.tau_super"]) == pytest.approx(thresholds["tau_super"], rel=1e-5)


def test_the_recipe_run_page_reads_as_a_person_needs_it(recipe_run: Path, synth_dir: Path, tmp_path: Path) -> None:
    """Several calibration models (seven by default): one training-curve panel per model kind (folds overlaid), the thresholds of every
    fold beside their mean, the raw metrics.json folded away; checked in Chromium by DOM and by screenshot."""
    from PIL import Image

    out = tmp_path / "recipe.html"
    assert run_cli(["report", str(recipe_run), "--test", str(synth_dir), "--out", str(out), "--images", "6"]) == 0
    html = out.read_text(encoding="utf-8")
    metrics = json.loads((recipe_run / "metrics.json").read_text(encoding="utf-8"))
    thresholds = saved_thresholds(recipe_run)
    per_fold = metrics["calibration"]["super_tau_per_fold"]
    n = len(per_fold)
    assert n == metrics["calibration"]["calibration_folds"] > 2  # as many as the tiny data's subclasses allow
    sync_playwright = _browser_or_skip()
    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.goto(out.as_uri(), wait_until="load")
            curves = page.eval_on_selector_all("#curves figure h3", "els => els.map(e => e.innerText)")
            fold_rows = page.eval_on_selector_all(
                "#run table", "ts => ts.map(t => t.innerText)")
            dump_visible = page.is_visible("#run details table")
            dump_summary = page.inner_text("#run details summary")
            sweep_captions = page.eval_on_selector_all("#sweeps figcaption", "els => els.map(e => e.innerText)")
            page.screenshot(path=str(shot), full_page=True)
            page.click("#run details summary")  # a click unfolds it
            dump_open = page.is_visible("#run details table")
        finally:
            context.close()
    # one panel per kind of model, never one per fold
    assert curves == ["stage final", f"stage calibration: {n} models overlaid"], curves
    # the per-fold thresholds and their mean, which is the open-set head's
    folds = next(t for t in fold_rows if f"calibration model {n}" in t)
    assert f"{per_fold[0]:.6g}" in folds and f"{thresholds['tau_super']:.6g}" in folds and "mean" in folds
    assert not dump_visible and dump_open and dump_summary.startswith("All of metrics.json (")
    assert any("mean of every calibration model's cut" in c for c in sweep_captions)
    assert html.count("<figure") < 14  # was 8 curve panels alone
    # the screenshot: a real rendering (a tall page, not blank), the folded dump not taking its height
    image = Image.open(shot).convert("L")
    width, height = image.size
    assert width == 1280 and 1500 < height < 20000, image.size
    colours = image.resize((64, 256)).getcolors(maxcolors=65536)
    assert colours is not None and len(colours) > 20  # text, charts, thumbnails: not a blank or one-colour page
