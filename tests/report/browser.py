"""Load an HTML file in a real headless Chromium (Debian's ``chromium``, driven by playwright) with
the network cut off, and report what a person would see: errors, requests it tried, what it drew."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return "needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs playwright (pip install -e '.[test]')"
    return None


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every request but the file itself
    canvases: int = 0  # drawn: non-zero size, inside Bokeh's shadow roots too
    svgs: int = 0
    distinct_colours: int = 0
    ink: float = 0.0  # the share of the screenshot's pixels that are not the background
    text: str = ""
    after_select: dict[str, Any] = field(default_factory=dict)


_COUNT = """() => {
    const all = [];
    const walk = (root) => {
        for (const el of root.querySelectorAll("*")) {
            all.push(el);
            if (el.shadowRoot) walk(el.shadowRoot);
        }
    };
    walk(document);
    const drawn = all.filter((e) => e.tagName === "CANVAS" && e.width > 0 && e.height > 0);
    return {canvases: drawn.length, svgs: all.filter((e) => e.tagName === "svg").length};
}"""

_READY = """() => window.Bokeh !== undefined && Bokeh.documents.length > 0
    && Bokeh.index !== undefined && Object.keys(Bokeh.index).length > 0"""


def load_offline(html: Path, screenshot: Path | None = None, choose: str | None = None) -> PageReport:
    """Open ``html`` from disk with every other request refused and the browser offline; wait for
    Bokeh to draw; with ``choose`` (text of an option of the page's first <select>), pick it and
    report the charts' titles after."""
    from playwright.sync_api import sync_playwright

    report = PageReport()
    target = html.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)

            def route(r: Any) -> None:
                if r.request.url == target:
                    r.continue_()
                else:
                    report.requests.append(r.request.url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: report.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: report.page_errors.append(str(e)))
            page.goto(target, wait_until="load")
            page.wait_for_function(_READY, timeout=30_000)
            page.wait_for_timeout(1500)  # Bokeh lays out and paints its canvases after the document is ready
            counts = page.evaluate(_COUNT)
            report.canvases, report.svgs = counts["canvases"], counts["svgs"]
            report.text = page.inner_text("body")
            png = page.screenshot(full_page=True)
            if screenshot is not None:
                screenshot.write_bytes(png)
            report.distinct_colours, report.ink = _ink(png)
            if choose is not None:
                report.after_select = _choose(page, choose)
        finally:
            browser.close()
    return report


def _choose(page: Any, label: str) -> dict[str, Any]:
    """Pick ``label`` in the first <select> inside Bokeh's shadow DOM; the page's text after."""
    picked = page.evaluate("""(label) => {
        const find = (root) => {
            for (const el of root.querySelectorAll("*")) {
                if (el.tagName === "SELECT" && [...el.options].some((o) => o.text === label)) return el;
                if (el.shadowRoot) { const got = find(el.shadowRoot); if (got) return got; }
            }
            return null;
        };
        const sel = find(document);
        if (!sel) return false;
        sel.value = [...sel.options].find((o) => o.text === label).value;
        sel.dispatchEvent(new Event("change", {bubbles: true}));
        sel.dispatchEvent(new Event("input", {bubbles: true}));
        return true;
    }""", label)
    page.wait_for_timeout(800)
    texts = page.evaluate("""() => {
        const out = [];
        const walk = (root) => {
            for (const el of root.querySelectorAll("*")) {
                if (el.shadowRoot) walk(el.shadowRoot);
                if (el.tagName === "CODE") out.push(el.textContent);
            }
        };
        walk(document);
        return out;
    }""")
    return {"picked": picked, "codes": texts}


def _ink(png: bytes) -> tuple[int, float]:
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    small = im.resize((max(1, im.width // 4), max(1, im.height // 4)))
    colours = small.getcolors(maxcolors=1 << 20) or []
    if not colours:
        return 0, 0.0
    background = max(colours)[0]
    total = small.width * small.height
    return len(colours), 1.0 - background / total
