"""The report as users see it: `report.html` of a real run opened in headless Chromium (Debian's package,
driven by playwright): no console errors, every image decodes, the results table is there. Skips, with the
reason, where playwright or the browser is missing (`apt-get install chromium`; `.ci/run` installs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from common import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


FIRST_SCREEN = (
    "els => els.map(e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, h: r.height}; })"
)


def open_page(html: Path, screenshot: Path | None = None, width: int = 1280) -> dict:
    """Load `html` in Chromium; return console errors, page errors, images and tables as the browser sees them."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (the dev extra has it)")
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start here is a skip, not a failure
            pytest.skip(f"chromium at {CHROMIUM} does not start under playwright: {str(exc)[:200]}")
        page = browser.new_page(viewport={"width": width, "height": 900})
        console, errors = [], []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.resolve().as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))"
        )
        tables = page.eval_on_selector_all("table", "els => els.map(t => t.innerText)")
        headings = page.eval_on_selector_all("h1, h2", "els => els.map(h => h.innerText)")
        verdict = page.eval_on_selector("h1 + p", "e => e.innerText")
        boxes = {sel: page.eval_on_selector_all(sel, FIRST_SCREEN) for sel in ("h1 + p", 'img[alt="tradeoff"]')}
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=False)
        browser.close()
    return {"console": console, "errors": errors, "images": images, "tables": tables, "headings": headings,
            "verdict": verdict, "boxes": boxes}  # fmt: skip


@pytest.mark.slow
def test_report_html_renders_in_a_real_browser(cpt_pair, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["--suite", "demo", "--limit", "8", "--policies", "balanced,aggressive", "-o", run]
    code, text = run_cli(monkeypatch, capsys, "run", *cpt_pair, *args)
    assert code == 0, text
    seen = open_page(run / "report.html", tmp_path / "shot.png", width=1400)
    # the first screen (1400 × 900) shows the verdict and the whole trade-off figure
    assert seen["verdict"].startswith("Chosen: ") or seen["verdict"].startswith("No model was chosen"), seen["verdict"]
    (verdict,), (figure,) = seen["boxes"]["h1 + p"], seen["boxes"]['img[alt="tradeoff"]']
    assert 0 <= verdict["top"] < verdict["bottom"] <= figure["top"] and figure["bottom"] <= 900, seen["boxes"]
    assert figure["h"] > 300  # readable, not shrunk to a stamp
    assert [m for m in seen["console"] if m[0] in ("error", "warning")] == [] and seen["errors"] == []
    assert len(seen["images"]) == (run / "report.html").read_text().count("<img") >= 1
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert "Results" in seen["headings"]
    results = seen["tables"][0]
    for model in ("base", "adapted", "balanced", "aggressive"):
        assert model in results
    mc = next(t for t in seen["tables"] if "predictions" in t and "majority" in t)
    assert "× " in mc and "demo_general_mc" in mc  # readable "“text” × n" / "position #k × n" cells
    assert (tmp_path / "shot.png").read_bytes().startswith(b"\x89PNG")
