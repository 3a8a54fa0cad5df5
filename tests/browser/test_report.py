"""The HTML report in headless Chromium (Debian's chromium + chromedriver; nothing is downloaded).

Fails, never skips, when the browser is missing: `make browser-deps` installs it.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from attattr.render.report import Section, write_report
from tests.unit.test_report import make_attribution, make_pair_attribution, png_file

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LAYERS, HEADS, TOKENS = 4, 6, 16


def _chrome():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser test needs Debian's chromium and chromium-driver; missing: {', '.join(missing)}. "
            "Install them with `make browser-deps` (apt-get install chromium chromium-driver).",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install -e '.[test]'", pytrace=False)
    profile = tempfile.mkdtemp(prefix="attattr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--force-device-scale-factor=1",
        "--window-size=1400,1800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium never looks for (or downloads) one
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    return driver, profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _chrome()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    attr = make_attribution(n=TOKENS, layers=LAYERS, heads=HEADS, seed=3)
    section = Section("Extra", "A dataset section with a figure.", images=[png_file(out / "fig.png")])
    path = write_report(out, attribution=attr, sections=[section])
    return attr, path


def _open(browser, path: Path) -> None:
    browser.get(path.resolve().as_uri())
    deadline = time.time() + 20
    while not browser.execute_script("return document.body && document.body.dataset.ready === '1'"):
        if time.time() > deadline:
            pytest.fail("the report never finished loading (document.body.dataset.ready unset)")
        time.sleep(0.05)


def _severe_logs(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _expected(attr, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    pos = attr.layers.index(layer)
    return (
        attr.attentions[pos, head].double().numpy().ravel(),
        attr.scores[pos, head].double().numpy().ravel(),
    )


def _checksum(values: np.ndarray) -> float:
    weights = 1 + np.arange(values.size) % 13
    return float((values * weights).sum())


def _assert_shows(browser, attr, layer: int, head: int) -> None:
    grid = browser.find_element("id", "head-grid")
    assert grid.get_attribute("data-selected") == f"{layer}-{head}"
    assert browser.execute_script("return attattrReport.selected()") == f"{layer}-{head}"
    shown = browser.execute_script("return attattrReport.values()")
    for kind, true in zip(("attention", "attribution"), _expected(attr, layer, head), strict=True):
        got = np.array(shown[kind])
        assert got.shape == true.shape
        tol = np.abs(true).max() * 2.0**-11  # float16 relative to the head's peak
        np.testing.assert_allclose(got, true, rtol=0, atol=tol, err_msg=f"{kind} of head {layer}-{head}")
        canvas = browser.find_element("id", "attn-canvas" if kind == "attention" else "attr-canvas")
        assert canvas.get_attribute("data-selected") == f"{layer}-{head}"
        page_sum = float(canvas.get_attribute("data-checksum"))
        assert page_sum == pytest.approx(_checksum(true), abs=tol * 13 * true.size)


def test_loads_without_errors_and_selects_the_most_important_head(browser, report):
    attr, path = report
    _open(browser, path)
    assert browser.execute_script("return attattrReport.errors") == []
    assert _severe_logs(browser) == []
    # nothing was fetched: no resource entries at all (the CSP would also block them)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    imp = attr.head_importance()
    flat = int(imp.argmax())
    _assert_shows(browser, attr, attr.layers[flat // HEADS], flat % HEADS)
    buttons = browser.find_elements("css selector", "#head-grid [data-layer][data-head]")
    assert len(buttons) == LAYERS * HEADS
    # the tree is drawn from its JSON: one circle per node
    tree = attr.tree()
    circles = browser.find_elements("css selector", "#tree-box svg circle.node")
    assert len(circles) == len(tree.nodes)


def test_clicking_a_head_shows_its_values(browser, report):
    attr, path = report
    _open(browser, path)
    before = browser.find_element("id", "attr-canvas").get_attribute("data-checksum")
    assert browser.execute_script("return attattrReport.selected()") != "2-5"  # the first click changes it
    for layer, head in ((2, 5), (0, 0), (3, 1)):
        button = browser.find_element(
            "css selector", f'#head-grid [data-layer="{layer}"][data-head="{head}"]'
        )
        button.click()
        _assert_shows(browser, attr, layer, head)
        assert "selected" in button.get_attribute("class")
        assert len(browser.find_elements("css selector", "#head-grid .head.selected")) == 1
    assert browser.find_element("id", "attr-canvas").get_attribute("data-checksum") != before
    # a row of the top-connections table selects its head
    row = browser.find_elements("css selector", "tr.edge")[1]
    row.click()
    _assert_shows(browser, attr, int(row.get_attribute("data-layer")), int(row.get_attribute("data-head")))
    assert browser.execute_script("return attattrReport.errors") == [] and _severe_logs(browser) == []


def test_hover_shows_query_key_and_value(browser, report):
    from selenium.webdriver.common.action_chains import ActionChains

    attr, path = report
    _open(browser, path)
    browser.find_element("css selector", '#head-grid [data-layer="1"][data-head="2"]').click()
    canvas = browser.find_element("id", "attr-canvas")
    cell = float(canvas.get_attribute("data-cell"))
    left = float(canvas.get_attribute("data-left"))
    top = float(canvas.get_attribute("data-top"))
    size = canvas.size
    i, j = 5, 9
    dx = left + (j + 0.5) * cell - size["width"] / 2  # offsets are from the element's centre
    dy = top + (i + 0.5) * cell - size["height"] / 2
    ActionChains(browser).move_to_element_with_offset(canvas, int(dx), int(dy)).perform()
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed()
    text = tip.text
    assert f"query #{i} {attr.tokens[i]}" in text and f"key #{j} {attr.tokens[j]}" in text
    shown = float(text.split("attribution ")[-1])
    assert shown == pytest.approx(attr.scores[1, 2, i, j].item(), rel=5e-3, abs=1e-12)


def test_screenshot_is_not_blank(browser, report, tmp_path):
    from PIL import Image  # matplotlib's own dependency

    attr, path = report
    _open(browser, path)
    page = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"), dtype=float)
    assert page.std() > 10, "the page screenshot is (nearly) one colour"
    for canvas_id in ("attn-canvas", "attr-canvas"):
        shot = browser.find_element("id", canvas_id).screenshot_as_png
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
        assert colours > 30, f"{canvas_id} shows only {colours} colours"
    grid = np.asarray(
        Image.open(io.BytesIO(browser.find_element("id", "head-grid").screenshot_as_png)).convert("RGB"),
        dtype=float,
    )
    assert grid.std() > 5


PAIR_SPLIT = 9  # the pair text starts at token 9 of 16


def _canvas_pixels(browser, canvas_id: str) -> np.ndarray:
    from PIL import Image

    shot = browser.find_element("id", canvas_id).screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=int)


def test_pair_segments_are_drawn_apart(browser, tmp_path):
    """The same tensors as one segment and as a pair: inside the maps only the segment lines differ."""
    pair = make_pair_attribution(n=TOKENS, split=PAIR_SPLIT, layers=LAYERS, heads=HEADS, seed=5)
    single = make_pair_attribution(n=TOKENS, split=PAIR_SPLIT, layers=LAYERS, heads=HEADS, seed=5)
    single.segment_ids = [0] * TOKENS
    shots = {}
    for name, attr in (("single", single), ("pair", pair)):
        path = write_report(tmp_path / name, attribution=attr, segment_names=["premise", "hypothesis"])
        _open(browser, path)
        assert browser.execute_script("return attattrReport.errors") == [] and _severe_logs(browser) == []
        canvas = browser.find_element("id", "attr-canvas")
        starts = canvas.get_attribute("data-segment-starts")
        assert starts == (str(PAIR_SPLIT) if name == "pair" else None)
        layout = {k: float(canvas.get_attribute(f"data-{k}")) for k in ("cell", "left", "top")}
        shots[name] = (layout, _canvas_pixels(browser, "attr-canvas"), _canvas_pixels(browser, "attn-canvas"))
        if name == "single":
            assert not browser.find_elements("css selector", ".seg-sep, .seg-legend, #tree-legend, .band")
            continue
        # chips: two tints, a visible bar between the segments, a legend with the names
        sep = browser.find_element("css selector", "#tokens .seg-sep")
        assert sep.is_displayed() and sep.size["height"] > 10
        last0 = browser.find_element("css selector", f'#tokens [data-index="{PAIR_SPLIT - 1}"]')
        first1 = browser.find_element("css selector", f'#tokens [data-index="{PAIR_SPLIT}"]')
        assert last0.location["x"] < sep.location["x"] < first1.location["x"]

        def tint(i: int) -> str:
            chip = browser.find_element("css selector", f'#tokens [data-index="{i}"]')
            return chip.value_of_css_property("background-color")

        assert tint(2) == tint(3) != tint(PAIR_SPLIT + 1) == tint(PAIR_SPLIT + 2)
        assert browser.find_element("id", "seg-legend").text.split() == ["premise", "hypothesis"]
        # the tree: two named bands, the boundary, cross edges as the tree module classifies them
        tree = pair.tree()
        box = browser.find_element("id", "tree-box")
        assert box.get_attribute("data-segment-starts") == str(PAIR_SPLIT)
        names = [t.text for t in browser.find_elements("css selector", "#tree-box text.band-name")]
        assert names == ["premise", "hypothesis"]
        cross = sum(tree.edge_kind(e) == "cross" for e in tree.edges)
        assert int(box.get_attribute("data-cross-edges")) == cross
        assert len(browser.find_elements("css selector", "#tree-box path.edge-line.cross")) == cross
        legend = browser.find_element("id", "tree-legend").text
        assert ("crosses segments" in legend) == (cross > 0)

    (layout, attr_single, attn_single), (layout_pair, attr_pair, attn_pair) = shots["single"], shots["pair"]
    assert layout == layout_pair
    cell, left, top = layout["cell"], layout["left"], layout["top"]
    size = TOKENS * cell
    line = left + PAIR_SPLIT * cell  # the boundary's x (columns) and, from the top, its y (rows)
    line_y = top + PAIR_SPLIT * cell
    for single_px, pair_px in ((attr_single, attr_pair), (attn_single, attn_pair)):
        inner = (slice(int(top) + 1, int(top + size) - 1), slice(int(left) + 1, int(left + size) - 1))
        diff = np.abs(single_px[inner] - pair_px[inner]).sum(axis=2) > 30
        ys, xs = np.nonzero(diff)
        near = (np.abs(xs + inner[1].start - line) <= 2.5) | (np.abs(ys + inner[0].start - line_y) <= 2.5)
        assert near.all(), "pixels away from the segment lines changed"
        # the column line: dark grey pixels down (almost) the whole height of the map
        col = pair_px[inner[0], int(line) - 2 : int(line) + 3]
        darkest = col.min(axis=1)
        grey = col.max(axis=2).min(axis=1) < 90
        assert grey.mean() > 0.9 and darkest.max() < 90
