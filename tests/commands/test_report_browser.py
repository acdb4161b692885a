"""The report of a tiny trained and analysed run, opened in headless Chromium with the network cut.

Checks what only a browser can: the page runs without a JavaScript error and fetches nothing,
every section is there, the latent plot and the 3-D viewer are drawn (their SVG / WebGL canvas
exist and a screenshot of them holds the colours they draw), the colour selector recolours the
particles, and the trajectory slider changes the frame drawn. Skipped without Chromium
(Debian: apt-get install chromium) or websocket-client, unless CRYODOMAIN_REQUIRE_BROWSER=1
(CI) turns that into a failure.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from headless_chromium import Chromium, find_chromium
from PIL import Image

from cryodomain.io.structure import read_all_models
from cryodomain.io.structure_writer import write_structure
from cryodomain.plots import segment_colours
from cryodomain.workflows import report_figures as figures
from cryodomain.workflows.report import SECTIONS, write_report

N_POINTS, N_IMAGES = 5, 48
# The tiny run barely moves in two epochs: its PC1 traversal is replaced by one in which segment 0
# moves this far per point along x, so that the frames differ on screen.
STEP_A = 4.0


def pixels(png: bytes) -> np.ndarray:
    """``(H, W, 3)`` uint8."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def near(image: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``#rrggbb``."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - target).max(axis=2) <= tolerance).sum())


def blend(colour: str, opacity: float) -> str:
    """``#rrggbb`` drawn with ``opacity`` over white."""
    channels = [round(opacity * int(colour[i : i + 2], 16) + (1 - opacity) * 255) for i in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in channels)


@pytest.fixture(scope="module")
def browser():
    program = find_chromium()
    try:
        import websocket  # noqa: F401
    except ImportError:
        program, reason = None, "websocket-client is not installed (pip install -e '.[test]')"
    else:
        reason = "no chromium on the PATH (Debian: apt-get install chromium)"
    if program is None:
        if os.environ.get("CRYODOMAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CRYODOMAIN_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with Chromium(program) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def report(tiny_analysis, tmp_path_factory):
    """The tiny run's report, its PC1 traversal moving segment 0 by STEP_A per point."""
    out = shutil.copytree(tiny_analysis.analysis, tmp_path_factory.mktemp("browser") / "analysis")
    models = read_all_models(out / "pc1" / "trajectory.pdb")
    segment = pd.read_csv(out / "segments.csv", keep_default_na=False)["segment"].to_numpy()
    coords = np.stack([model.coords for model in models])
    coords[:, segment == 0, 0] += STEP_A * np.arange(len(models))[:, None]
    write_structure(out / "pc1" / "trajectory.pdb", models[0], coords, full_atom=False)
    return write_report(tiny_analysis.run, out, out / "report.html", tiny_analysis.evaluation)


@pytest.fixture(scope="module")
def page(browser, report):
    """The browser with the report open and every figure drawn."""
    browser.open(report)
    browser.wait_until(
        "document.querySelectorAll('.plotly-graph-div').length > 0 && Array.from(document.querySelectorAll('.plotly-graph-div'))"
        ".every(d => d._fullLayout) && document.querySelectorAll('#trajectory-pc1 canvas').length > 0"
    )
    return browser


def test_the_page_runs_without_errors_and_fetches_nothing(page, report):
    page.wait_until("document.readyState === 'complete'")
    assert page.errors() == []
    requested = page.requests()
    assert report.resolve().as_uri() in requested
    assert all(url.startswith(("file://", "data:")) for url in requested), [url for url in requested if not url.startswith(("file://", "data:"))]


def test_every_section_is_on_the_page_and_in_the_navigation(page):
    keys = [key for key, _ in SECTIONS]
    assert page.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)") == keys
    assert page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))") == [f"#{key}" for key in keys]
    for key in keys:
        assert page.evaluate(f"document.getElementById('{key}').getBoundingClientRect().height") > 100, key


def test_the_latent_plot_is_drawn_with_a_point_per_particle(page, report):
    assert page.evaluate("document.querySelectorAll('#latent-pca svg.main-svg').length") >= 1
    assert page.evaluate("document.querySelectorAll('#latent-pca .scatterlayer .trace')[0].querySelectorAll('path.point').length") == N_IMAGES
    image = pixels(page.element_screenshot("#latent-pca"))
    assert image.std() > 10
    # The particles are drawn in their clusters' colours (markers 75% opaque on white).
    labels = np.load(report.parent / "kmeans" / "labels.npy")
    for cluster, count in enumerate(np.bincount(labels)):
        assert near(image, blend(figures.CLUSTER_COLOURS[cluster], 0.75), 20) > 15 * count, cluster


def test_the_colour_selector_recolours_the_particles_by_a_segment_motion(page, report):
    before = pixels(page.element_screenshot("#latent-pca"))
    page.evaluate("(() => { const s = document.getElementById('latent-colour'); s.value = '1'; s.dispatchEvent(new Event('change')); })()")
    page.wait_until("document.getElementById('latent-pca')._fullData[1].marker.showscale === true")
    motions = pd.read_csv(report.parent / "motions.csv")
    expected = motions[motions["segment"] == 0].sort_values("particle")["angle_deg"].to_numpy()
    np.testing.assert_allclose(page.evaluate("Array.from(document.getElementById('latent-pca').data[1].marker.color)"), expected, atol=1e-3)
    after = pixels(page.element_screenshot("#latent-pca"))
    assert before.shape == after.shape and (np.abs(before.astype(int) - after.astype(int)).max(axis=2) > 30).sum() > 200
    page.evaluate("(() => { const s = document.getElementById('latent-colour'); s.value = '0'; s.dispatchEvent(new Event('change')); })()")


def scene(page) -> np.ndarray:
    """The 3-D scene of PC1's viewer as drawn (WebGL), without the slider and buttons below it."""
    page.scroll_into_view("#trajectory-pc1")
    box = page.evaluate(
        "(() => { const gd = document.getElementById('trajectory-pc1'), r = gd.getBoundingClientRect();"
        " const s = gd._fullLayout._size, d = gd._fullLayout.scene.domain;"
        " return {x: r.x + window.scrollX + s.l + d.x[0] * s.w, y: r.y + window.scrollY + s.t + (1 - d.y[1]) * s.h,"
        " width: (d.x[1] - d.x[0]) * s.w, height: 0.85 * (d.y[1] - d.y[0]) * s.h}; })()"
    )
    return pixels(page.screenshot(box))


def drawn_x(page, trace: int) -> np.ndarray:
    """x of a trace of PC1's viewer as plotly holds it now (the frame shown)."""
    return np.array(page.evaluate(f"Array.from(document.getElementById('trajectory-pc1')._fullData[{trace}].x)"), dtype=float)


def test_the_3d_viewer_draws_the_trace_in_segment_colours(page):
    assert page.evaluate("document.querySelectorAll('#trajectory-pc1 canvas').length") >= 1
    assert page.evaluate("document.getElementById('trajectory-pc1')._fullLayout.scene._scene.glplot !== undefined")
    image = scene(page)
    colours = segment_colours(3)
    for colour in colours:
        assert near(image, colour, 30) > 100, colour


def test_the_trajectory_slider_changes_the_frame_drawn(page):
    plot = "document.getElementById('trajectory-pc1')"
    assert page.evaluate(f"{plot}._fullLayout.sliders[0].active") == 0
    first = drawn_x(page, 1)
    before = scene(page)
    # A click at the right end of the slider's rail, as a user would.
    rail = page.scroll_into_view("#trajectory-pc1 .slider-rail-rect")
    page.click(rail["x"] + rail["width"] - 2, rail["y"] + rail["height"] / 2)
    page.wait_until(f"{plot}._fullLayout.sliders[0].active === {N_POINTS - 1}")
    page.wait_until(f"Math.abs({plot}._fullData[1].x[0] - ({first[0]})) > 1", 30)
    last = drawn_x(page, 1)
    # Segment 0 is drawn where the last traversal point puts it.
    finite = np.isfinite(first) & np.isfinite(last)
    assert np.median(last[finite] - first[finite]) == pytest.approx(STEP_A * (N_POINTS - 1), abs=0.5)
    assert page.evaluate(f"{plot}.querySelector('.slider-group .slider-label').textContent") == f"PC1 point {N_POINTS}"
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", await_promise=True)
    after = scene(page)
    assert before.shape == after.shape and (np.abs(before.astype(int) - after.astype(int)).max(axis=2) > 40).sum() > 300
    assert page.errors() == []


def test_the_page_cannot_reach_the_network(page):
    # Last: the attempt leaves a failed request behind.
    outcome = page.evaluate("fetch('http://example.com/').then(() => 'fetched', () => 'refused')", await_promise=True)
    assert outcome == "refused"
