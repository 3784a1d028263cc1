"""The documentation: the README is short and its links hold, the site builds with warnings as
errors, and a headless browser sees every page and figure of it."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_readme_is_short_with_the_methods_early_and_its_links_and_figures_exist():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300, len(lines)
    assert any(line.startswith("| `peak` |") for line in lines[:100])  # the methods' table, early
    anchors = {_anchor(line.lstrip("#")) for line in lines if line.startswith("#")}
    for target in LINK.findall(text) + IMAGE.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        else:
            assert anchor in anchors, target


def test_every_figure_in_docs_is_shown_on_a_page():
    pages = "".join(p.read_text() for p in DOCS.glob("*.md"))
    for figure in DOCS.glob("*.png"):
        assert f"]({figure.name})" in pages, f"{figure.name} is on no page"


def test_the_readme_example_is_the_one_the_python_page_shows():
    def example(path: Path) -> str:
        text = path.read_text()
        return re.search(r"<!-- notebook example -->\n```python\n(.*?)```", text, re.S).group(1)

    assert example(ROOT / "README.md") == example(DOCS / "python.md")


def _build(out: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _browser():
    """A headless Chromium driven by selenium, or a skip naming what is missing (a failure where
    ``ABLATE_LIT_REQUIRE_BROWSER`` is set, as CI sets it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver:
        missing = "pip install -e '.[docs]'" if webdriver is None else "apt install chromium chromium-driver"
        if os.environ.get("ABLATE_LIT_REQUIRE_BROWSER"):
            pytest.fail(f"no headless browser for the docs test: {missing}")
        pytest.skip(f"no headless browser: {missing}")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_the_site_builds_without_a_warning_and_a_browser_sees_every_page_and_figure(tmp_path):
    built = _build(tmp_path / "html")
    assert built.returncode == 0, built.stderr[-3000:]
    site = tmp_path / "html"
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    for name in pages:
        assert (site / f"{name}.html").exists(), name
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = _browser()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        shown = 0
        for name in pages:
            browser.get(f"{base}/{name}.html")
            title = browser.execute_script("return document.querySelector('article h1')?.textContent || ''")
            assert title.strip(), f"{name}: no title"
            text = browser.execute_script("return document.querySelector('article').innerText")
            assert len(text) > 200, f"{name}: {text[:200]!r}"
            images = browser.execute_script(
                "return Array.from(document.querySelectorAll('article img'))"
                ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0, i.naturalWidth])"
            )
            for src, loaded, width in images:
                assert loaded and width >= 300, f"{name}: figure {src} not rendered"
            shown += len(images)
        assert shown >= len(list(DOCS.glob("*.png")))
        browser.get(f"{base}/api.html")  # the reference, generated from the docstrings
        api = browser.execute_script("return document.querySelector('article').innerText")
        for name in ("ablate_lit.run", "Results", "AblationConfig", "CausalLMAblation", "TextData", "TaskData"):
            assert name in api, name
        assert "attribution_top_k" in api and "def " not in api
    finally:
        browser.quit()
        server.shutdown()
