"""The HTML report in a real browser: a tiny run's report.html opened in headless Chromium (Debian's package).

Every image must decode (its PNG embedded as a data: URI) at the size of the PNG written beside report.html, every
table must render with rows and cells, the page must raise no console errors, and a full-page screenshot must be a
non-blank PNG. Selenium drives /usr/bin/chromium through /usr/bin/chromedriver; nothing is downloaded (the driver
path is given, so Selenium Manager never runs). Needs `apt-get install chromium chromium-driver`; run with
`tox -e browser` (or `pytest -m browser tests/test_browser.py`).
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1280, 900

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
        "apt-get install chromium chromium-driver",
    ),
]

# This machine's network is closed: without the background-networking flags Chromium waits on refused connections.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WIDTH},{HEIGHT}",
]

IMAGES_JS = """
return Array.from(document.images).map(img => {
  const r = img.getBoundingClientRect();
  return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
          width: r.width, height: r.height, dataPng: img.src.startsWith('data:image/png;base64,')};
});
"""

TABLES_JS = """
return Array.from(document.querySelectorAll('table')).map(t => {
  const r = t.getBoundingClientRect();
  const body = Array.from(t.querySelectorAll('tbody tr'));
  return {
    headers: Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim()),
    rows: body.length,
    cellsPerRow: body.map(tr => tr.querySelectorAll('td').length),
    rowHeights: body.map(tr => tr.getBoundingClientRect().height),
    width: r.width, height: r.height, right: r.right,
    display: getComputedStyle(t).display,
    border: getComputedStyle(t.querySelector('td, th')).borderTopWidth,
  };
});
"""


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """report.html of a real `harness reproduce tiny` run (every stage, ~1-2 min on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("browser-run")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", HARNESS_CACHE=str(root / "cache"))
    run_dir = root / "run"
    res = subprocess.run([sys.executable, "-m", "harness.cli", "reproduce", "tiny", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    html = run_dir / "report" / "report.html"
    assert html.is_file(), sorted(p.name for p in (run_dir / "report").iterdir())
    return html


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium under Selenium, with a fresh profile; quit afterwards."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (tox -e browser installs it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _markdown_tables(md: str) -> list[int]:
    """Body-row counts of the github-format tables in report.md (a header, a |---| rule, then rows)."""
    counts, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()) and i > 0 and lines[i - 1].startswith("|"):
            n = 0
            while i + 1 + n < len(lines) and lines[i + 1 + n].startswith("|"):
                n += 1
            counts.append(n)
    return counts


def test_report_renders_in_chromium(report_html: Path, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    folder = report_html.parent
    browser.get(report_html.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert browser.title == "Run report: tiny"
    assert browser.find_element("tag name", "h1").text == "Run report: tiny"

    # Images: one per PNG written beside report.html, each decoded at that PNG's size and laid out on the page.
    pngs = sorted(folder.glob("*.png"))
    assert pngs, "the report wrote no PNG"
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
    images = browser.execute_script(IMAGES_JS)
    assert len(images) == len(pngs), (images, pngs)
    for img in images:
        assert img["dataPng"], img
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, f"broken image: {img}"
        assert img["width"] > 100 and img["height"] > 50, f"image not laid out: {img}"
        assert img["width"] <= WIDTH, f"image wider than the window: {img}"
    png_sizes = sorted(Image.open(p).size for p in pngs)
    assert sorted((i["naturalWidth"], i["naturalHeight"]) for i in images) == png_sizes

    # Tables: as many as report.md has, same row counts, each row full of cells and rendered with a height.
    tables = browser.execute_script(TABLES_JS)
    md_rows = _markdown_tables((folder / "report.md").read_text())
    assert len(tables) == len(md_rows) > 0, (len(tables), md_rows)
    assert [t["rows"] for t in tables] == md_rows
    for t in tables:
        assert t["display"] == "table" and t["headers"] and all(t["headers"]), t
        assert t["rows"] > 0 and all(n == len(t["headers"]) for n in t["cellsPerRow"]), t
        assert t["height"] > 0 and t["width"] > 0 and all(h > 0 for h in t["rowHeights"]), t
        assert t["border"] != "0px", t  # the report's CSS applied
    assert tables[0]["headers"] == ["stage", "status"]
    # Nothing overflows the window sideways (a table wider than the page would need a horizontal scrollbar).
    view_width = browser.execute_script("return document.documentElement.clientWidth")
    overflowing = [t["headers"] for t in tables if t["right"] > view_width]
    assert not overflowing, f"tables overflow the {view_width}px page: {overflowing}"
    assert browser.execute_script("return document.documentElement.scrollWidth") <= view_width

    # No console errors (a bad data: URI or script error would show here).
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    # Full-page screenshot: a real, non-blank PNG of the window's width and the page's height.
    page_height = browser.execute_script("return document.documentElement.scrollHeight")
    shot = tmp_path / "report.png"
    data = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "fromSurface": True})["data"]
    shot.write_bytes(base64.b64decode(data))
    raw = shot.read_bytes()
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        gray = im.convert("L")
        assert im.width >= WIDTH * 0.9 and im.height >= min(page_height, HEIGHT) * 0.9, (im.size, page_height)
        lo, hi = gray.getextrema()
        assert lo < hi, "the screenshot is one flat colour"
        hist = gray.histogram()
        ink = 1 - hist[255] / (gray.width * gray.height)
        assert ink > 0.02, f"the screenshot is almost blank ({ink:.1%} non-white pixels)"
    print(f"screenshot: {shot} ({im.width}x{im.height}, page height {page_height})")
