"""Open reports in the system's headless Chromium (Debian's ``chromium`` + ``chromium-driver``) with Selenium.

Used by the browser test and to regenerate the README's screenshot::

    python tests/browser.py [MODEL_DIR] --out docs/report.png      # from the repository's root

Nothing is downloaded: the browser and its driver come from the system packages (``.ci/run`` installs
them with apt); :func:`find_browser` says why a browser cannot be used when one is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Where Debian (and most distributions) put the browser and its WebDriver.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)
#: Flags that keep Chromium from reaching the network or hanging in a sandboxed CI container.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class BrowserUnavailable(RuntimeError):
    """No usable headless browser: the message says what is missing and how to install it."""


def find_browser() -> tuple[str, str]:
    """``(browser, chromedriver)`` paths; raises :class:`BrowserUnavailable` with the reason otherwise.

    ``ALTI_ONNX_CHROMIUM`` and ``ALTI_ONNX_CHROMEDRIVER`` override the search on ``PATH``.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserUnavailable("the Python package 'selenium' is not installed (pip install 'alti-onnx[test]')") from None
    found = []
    for variable, names in (("ALTI_ONNX_CHROMIUM", BROWSER_NAMES), ("ALTI_ONNX_CHROMEDRIVER", DRIVER_NAMES)):
        override = os.environ.get(variable)
        if override:
            if not (os.path.isfile(override) and os.access(override, os.X_OK)):
                raise BrowserUnavailable(f"{variable}={override} is not an executable file")
            found.append(override)
        else:
            found.append(next(filter(None, map(shutil.which, names)), None))
    missing = [name for name, path in zip(("chromium", "chromedriver"), found) if not path]
    if missing:
        raise BrowserUnavailable(
            f"{' and '.join(missing)} not found on PATH; install Debian's packages with "
            "'apt-get install -y chromium chromium-driver' (.ci/run does)"
        )
    return found[0], found[1]


def require_browser() -> None:
    """In a test: skip it with the reason when no browser is usable, or fail under ALTI_ONNX_REQUIRE_BROWSER=1."""
    import pytest

    try:
        find_browser()
    except BrowserUnavailable as exc:
        if os.environ.get("ALTI_ONNX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ALTI_ONNX_REQUIRE_BROWSER=1 but no browser: {exc}")
        pytest.skip(f"no headless browser: {exc}")


def docs_screenshot(shot: Path, name: str) -> None:
    """Copy a test's screenshot into docs/ as ``name`` when ALTI_ONNX_DOCS_SCREENSHOTS=1 (regenerating the
    docs' pictures; a plain test run leaves the checkout as it is)."""
    if os.environ.get("ALTI_ONNX_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(shot, Path(__file__).resolve().parent.parent / "docs" / name)


@contextmanager
def headless_chromium(width: int = 1200, height: int = 1000) -> Iterator[object]:
    """A Selenium WebDriver for the system's headless Chromium, in a fresh profile removed afterwards."""
    browser, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="alti-onnx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = None
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_report(driver, path: str | Path, timeout: float = 30.0) -> None:
    """Load a report from ``file://`` and wait until its script has drawn the page."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(Path(path).resolve().as_uri())
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready') === '1'")
    )


def fit_window_to_page(driver, width: int | None = None) -> None:
    """Resize the window so that the viewport shows the whole page (repeated: the heatmap follows the width)."""
    width = width or driver.get_window_size()["width"]
    for _ in range(5):
        height, inner_width, inner_height, outer_height = driver.execute_script(
            "return [Math.ceil(document.documentElement.scrollHeight), window.innerWidth, window.innerHeight,"
            " window.outerHeight]"
        )
        if inner_height >= height and driver.get_window_size()["width"] == width:
            break
        driver.set_window_size(width, max(200, height + max(0, outer_height - inner_height)))
        driver.execute_script("window.dispatchEvent(new Event('resize'))")
        driver.execute_script("return new Promise(r => setTimeout(r, 250))")


def full_page_screenshot(driver, png: str | Path, width: int | None = None) -> Path:
    """Scroll to the top, resize the window to the whole page and save a PNG of it."""
    driver.execute_script("window.scrollTo(0, 0)")
    fit_window_to_page(driver, width)
    driver.save_screenshot(str(png))
    return Path(png)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a maintenance command
    """Write a report and its screenshot (the README's docs/report.png)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the recipes (models/) of the checkout
    from alti_onnx import Explainer
    from alti_onnx.report import write_html

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", nargs="?", help="export directory (default: the sentiment model, built if needed)")
    parser.add_argument("--text", default="The movie was surprisingly good, with a clever plot and warm performances.")
    parser.add_argument("--out", default="docs/report.png")
    parser.add_argument("--html", default=None, help="also keep the HTML here")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--hover", type=int, nargs=2, metavar=("ROW", "COL"), default=None,
                        help="show the tooltip of this cell in the screenshot")
    parser.add_argument("--routes", action="store_true", help="explain with the routes (and the logit where the "
                        "model has one) and picture the routes' section (docs/report-routes.png)")
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        from models.sentiment import build_sentiment_classifier

        model = str(build_sentiment_classifier())
    explainer = Explainer(model)
    extra = {}
    if args.routes:
        from alti_onnx.results.logit import LogitQuery
        from alti_onnx.results.routes import RouteQuery
        from alti_onnx.serve import ExplainService

        extra = {"routes": RouteQuery(), **({"logit": LogitQuery()} if ExplainService(explainer, "").logit else {})}
    explanation = explainer.explain(args.text, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        html_path = Path(args.html or Path(tmp) / "report.html")
        write_html(explanation, html_path, text=args.text, model=Path(model).name)
        with headless_chromium(args.width, 900) as driver:
            open_report(driver, html_path)
            if args.routes:
                show_routes(driver, explanation.routes.edges, args.width)
            else:
                fit_window_to_page(driver, args.width)
            if args.hover:
                hover_cell(driver, *args.hover)
            driver.save_screenshot(args.out)
    print(f"wrote {args.out}")


def hover_route_edge(driver, index: int) -> bool:
    """Point at the middle of the routes' edge ``index`` (scrolled into view if it is not); False, without
    moving, when another element lies on top there."""
    from selenium.webdriver.common.action_chains import ActionChains

    point = driver.execute_script(
        """
        const g = document.querySelector('.alti-route-edge[data-index="' + arguments[0] + '"]');
        const box = g.getBoundingClientRect();
        if (box.top < 0 || box.bottom > window.innerHeight) g.scrollIntoView({block: 'center'});
        const path = g.querySelector('path'), p = path.getPointAtLength(path.getTotalLength() / 2);
        const m = path.getScreenCTM(), x = m.a * p.x + m.c * p.y + m.e, y = m.b * p.x + m.d * p.y + m.f;
        const hit = document.elementFromPoint(x, y);
        return {x: x, y: y, same: !!hit && hit.closest('.alti-route-edge') === g};
        """, index)
    if not point["same"]:
        return False
    actions = ActionChains(driver)
    actions.w3c_actions.pointer_action.move_to_location(int(point["x"]), int(point["y"]))
    actions.perform()
    return True


def show_routes(driver, edges, width: int = 1100, most: int = 1000) -> int | None:
    """Frame the routes' section for a picture: the window ``width`` wide and as tall as the section (at
    most ``most`` pixels), the prediction's node clicked and the tooltip of the heaviest attention edge
    between two positions that shows in the window; returns that edge's index (None: none shows)."""
    height = driver.execute_script("return Math.ceil(document.getElementById('routes-section')"
                                   ".getBoundingClientRect().height) + 36")
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(width, min(height, most) + chrome)
    driver.execute_script("window.scrollTo(0, document.getElementById('routes-section').getBoundingClientRect().top"
                          " + window.scrollY - 12)")
    driver.find_element("css selector", ".alti-route-prediction").click()
    visible = driver.execute_script(
        "return Array.from(document.querySelectorAll('.alti-route-edge')).filter(g => {"
        "const b = g.getBoundingClientRect(); return b.top >= 0 && b.bottom <= window.innerHeight})"
        ".map(g => Number(g.dataset.index))")
    ordered = sorted((k for k in visible if edges[k].kind == "attention" and edges[k].source != edges[k].target),
                     key=lambda k: -edges[k].weight)
    return next((k for k in ordered if hover_route_edge(driver, k)), None)


def hover_cell(driver, row: int, column: int) -> dict:
    """Move the pointer over one heatmap cell (shows the tooltip, highlights the row and column).

    Returns the cell's center in viewport coordinates (``x``, ``y``) after scrolling it into view.
    """
    from selenium.webdriver.common.action_chains import ActionChains

    point = driver.execute_script(
        """
        const [row, col] = arguments;
        const canvas = document.getElementById('heatmap'), g = window.altiReport.geometry();
        const wrap = document.getElementById('heatmap-wrap');
        const cx = g.left + (col + 0.5) * g.cell, cy = g.top + (row + 0.5) * g.cell;
        wrap.scrollTo(cx - wrap.clientWidth / 2, cy - wrap.clientHeight / 2);  // a zoomed heatmap scrolls
        let r = canvas.getBoundingClientRect();
        window.scrollBy(r.left + cx - window.innerWidth / 2, r.top + cy - window.innerHeight / 2);
        r = canvas.getBoundingClientRect();
        return {x: r.left + g.left + (col + 0.5) * g.cell, y: r.top + g.top + (row + 0.5) * g.cell};
        """,
        row, column,
    )
    actions = ActionChains(driver)
    actions.w3c_actions.pointer_action.move_to_location(int(point["x"]), int(point["y"]))
    actions.perform()
    driver.execute_script("return new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
    return point


if __name__ == "__main__":  # pragma: no cover
    main()
