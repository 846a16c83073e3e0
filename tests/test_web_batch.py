"""The web page's batch section and richer single answers, in headless Chromium (Debian's
package, driven by Playwright): a dropped 20-row CSV runs as a job to the end on the page, its
downloads parse and its O/H histogram has bars; a single prediction shows its SDSS object, its
flags in words and, for a model that predicts mass, the mass–metallicity plot.

Screenshots go to ``$GALMET_SCREENSHOTS`` (a folder) when set, else to the test's tmp dir.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import galaxy, model_cutouts, service, skip_or_fail, tiny_checkpoint
from tests.test_web import ARGS, CHROMIUM, only_own_site

N_ROWS = 20
JOB_TIMEOUT_MS = 180_000  # two shared CPU cores: a 20-row job takes seconds, not minutes


def _serve(model: Path, skyserver: str, tmp: Path):
    url = f"sqlite:///{tmp}/web.sqlite3"
    # Chunks of 5: the job's progress moves in four steps the page can show. A patient
    # SkyServer client: on a loaded machine the mock answers slowly, and a row failed by a
    # timeout is not what these tests are about.
    return service(
        model, skyserver, url, tmp, skyserver_rate=0, skyserver_timeout=30.0, job_chunk_size=5
    )


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        skip_or_fail("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def mass_site(browser, tiny_model, mock_skyserver, tmp_path_factory):
    """The service with the tiny model that predicts O/H and stellar mass."""
    with _serve(tiny_model, mock_skyserver, tmp_path_factory.mktemp("web-mass")) as base:
        yield base


@pytest.fixture(scope="module")
def oh_site(browser, mock_skyserver, tmp_path_factory):
    """The service with a tiny model that predicts O/H only."""
    tmp = tmp_path_factory.mktemp("web-oh")
    model = tmp / "tiny-oh.pt"
    tiny_checkpoint(
        n_out=1, config={"image_size": 64, "pixel_scale": 0.396}, sigma_scale={1: 1.0, 2: 1.0}
    ).save(model)
    with _serve(model, mock_skyserver, tmp) as base:
        yield base


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("GALMET_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _drop(page, selector: str, name: str, text: str, mime: str) -> None:
    """Drop a file holding ``text`` on ``selector``, as a user dragging it from a folder."""
    transfer = page.evaluate_handle(
        """([name, text, mime]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, { type: mime }));
            return transfer;
        }""",
        [name, text, mime],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_dropped_csv_runs_to_the_end_with_downloads_and_histogram(
    browser, mass_site, mock_sky, shots
):
    from astropy.io.votable import parse_single_table
    from astropy.table import Table
    from playwright.sync_api import expect

    ids = [f"g{i:02d}" for i in range(N_ROWS)]
    positions = [galaxy(mock_sky, i) for i in range(N_ROWS)]
    lines = ["id,ra,dec"] + [
        f"{name},{ra!r},{dec!r}" for name, (ra, dec) in zip(ids, positions, strict=True)
    ]
    page = browser.new_page(accept_downloads=True)
    page.goto(mass_site + "/")
    # Every value the progress bar shows, as the page sets it.
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.getElementById("job-progress");
            new MutationObserver(() => window.progressSeen.push(Number(bar.value)))
                .observe(bar, { attributes: true, attributeFilter: ["value"] });
        }"""
    )
    _drop(page, "#batch-drop", "targets.csv", "\n".join(lines) + "\n", "text/csv")
    expect(page.locator("#job")).to_be_visible(timeout=30_000)
    expect(page.locator("#job-title")).to_contain_text("(targets.csv)")
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-title")).to_contain_text(": done")
    expect(page.locator("#job-counts")).to_have_text(
        f"{N_ROWS} of {N_ROWS} answered · {N_ROWS} predicted · 0 failed · 0 invalid"
    )
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 1.0 and seen == sorted(seen), seen
    assert page.eval_on_selector("#job-progress", "bar => bar.position") == 1.0

    # The downloads: the CSV through the csv module, the VOTable and FITS through astropy.
    expect(page.locator("#download-votable")).to_be_visible()
    with page.expect_download() as got:
        page.click("#download-csv")
    assert got.value.suggested_filename.endswith(".csv")
    # The CSV names its model in '#' lines above the header, as every results CSV does.
    text = Path(got.value.path()).read_text()
    assert "# model_version: " in text
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    assert [r["id"] for r in rows] == ids
    assert {r["status"] for r in rows} == {"done"}
    oh = [float(r["oh_p50"]) for r in rows]
    with page.expect_download() as got:
        page.click("#download-votable")
    assert got.value.suggested_filename.endswith(".vot")
    table = parse_single_table(got.value.path()).to_table()
    assert len(table) == N_ROWS
    assert list(table["id"]) == ids
    assert list(table["oh_p50"]) == pytest.approx(oh)
    with page.expect_download() as got:
        page.click("#download-fits")
    assert got.value.suggested_filename.endswith(".fits")
    table = Table.read(got.value.path(), hdu=1)
    assert list(table["id"]) == ids
    assert list(table["oh_p50"]) == pytest.approx(oh)
    assert table["galmet_ra"].unit == "deg"  # galmet's column; the input's "ra" has none

    # The histogram: its bars hold every predicted row, once.
    expect(page.locator("#histogram")).to_be_visible()
    bars = page.locator("#histogram rect.bar")
    assert bars.count() >= 3
    counts = [int(c) for c in bars.evaluate_all("bars => bars.map(b => b.dataset.count)")]
    assert sum(counts) == N_ROWS and max(counts) > 0
    heights = bars.evaluate_all("bars => bars.map(b => b.getBBox().height)")
    assert [h > 0 for h in heights] == [c > 0 for c in counts]
    expect(page.locator("#histogram-caption")).to_contain_text(f"of {N_ROWS} galaxies")
    page.screenshot(path=str(shots / "page-batch.png"), full_page=True)
    page.close()


def test_chosen_votable_and_fits_run_and_a_bad_list_says_why(
    browser, mass_site, mock_sky, tmp_path
):
    from astropy.table import Table
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(mass_site + "/")
    # A list without coordinates: the API's one-line reason, no job.
    page.set_input_files(
        "#batch-input",
        files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": b"name,z\na,0.1\n"}],
    )
    expect(page.locator("#batch-error")).to_contain_text("bad.csv: 422")
    expect(page.locator("#job")).to_be_hidden()

    positions = [galaxy(mock_sky, i) for i in (30, 31, 32)]
    table = Table(rows=positions, names=("ra", "dec"))
    path = tmp_path / "targets.vot"
    table.write(path, format="votable")
    page.set_input_files("#batch-input", str(path))
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#batch-error")).to_be_hidden()
    expect(page.locator("#job-counts")).to_contain_text("3 of 3 answered · 3 predicted")
    expect(page.locator("#histogram-caption")).to_contain_text("of 3 galaxies")

    # A FITS table, chosen the same way.
    path = tmp_path / "targets.fits"
    Table(rows=[galaxy(mock_sky, i) for i in (33, 34)], names=("RA", "DEC")).write(path)
    page.set_input_files("#batch-input", str(path))
    expect(page.locator("#job-title")).to_contain_text("(targets.fits)")
    expect(page.locator("#job-percent")).to_have_text("100%", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-counts")).to_contain_text("2 of 2 answered · 2 predicted")
    page.close()


def test_mass_model_answer_has_object_link_flags_in_words_and_mzr_plot(
    browser, mass_site, mock_sky, mock_skyserver, tiny_model, shots
):
    from playwright.sync_api import expect

    page = browser.new_page()
    # The page and its plots need nothing but the service (the SkyServer link is not
    # followed): every other request is refused and recorded, as on an air-gapped cluster.
    outside = only_own_site(page, mass_site)
    page.goto(mass_site + "/")
    ra, dec = galaxy(mock_sky, 5)
    object_id = int(mock_sky.catalog()[5]["objID"])
    page.fill("#ra", f"{ra:.6f}")
    page.fill("#dec", f"{dec:.6f}")
    page.click("#predict-button")
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    link = page.locator("#object a")
    expect(link).to_have_text(f"SDSS {object_id}")
    expect(link).to_have_attribute(
        "href", f"{mock_skyserver}/VisualTools/explore/summary?id={object_id}"
    )
    expect(page.locator("#mass")).to_contain_text("log M*/M☉ = ")
    expect(page.locator("#mzr")).to_be_visible()
    expect(page.locator("#mzr svg polyline.curve")).to_have_count(1)
    expect(page.locator("#mzr svg circle.point")).to_have_count(1)
    expect(page.locator("#mzr svg line.errorbar")).to_have_count(2)
    expect(page.locator("#mzr-offset")).to_contain_text("the relation")
    page.screenshot(path=str(shots / "page-single-mass.png"), full_page=True)

    # A grayscale, non-square upload: its flags as sentences, not flag names.
    (jpeg,) = model_cutouts(tiny_model, mock_sky, [galaxy(mock_sky, 6)])
    grey = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("L").resize((60, 48)).save(grey, format="PNG")
    page.set_input_files(
        "#file-input",
        files=[{"name": "grey.png", "mimeType": "image/png", "buffer": grey.getvalue()}],
    )
    expect(page.locator("#details")).to_contain_text("uploaded image", timeout=60_000)
    flags = page.locator("#flags li")
    expect(page.locator("#flags li[data-flag=grayscale_converted]")).to_contain_text(
        "The image was grayscale"
    )
    expect(page.locator("#flags li[data-flag=not_square]")).to_contain_text("not square")
    expect(page.locator("#flags li[data-flag=resized]")).to_contain_text("resized")
    assert "_" not in " ".join(flags.all_text_contents())
    expect(page.locator("#object")).to_be_empty()
    expect(page.locator("#mzr")).to_be_visible()  # mass comes from the image as well
    page.screenshot(path=str(shots / "page-flags.png"), full_page=True)
    page.close()
    assert outside == [], f"the page asked the internet for {outside}"


def test_oh_only_model_shows_no_mzr_plot(browser, oh_site, mock_sky, shots):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(oh_site + "/")
    expect(page.locator("#model-badge")).to_contain_text("outputs oh_p50 ·")
    ra, dec = galaxy(mock_sky, 7)
    page.fill("#ra", f"{ra:.6f}")
    page.fill("#dec", f"{dec:.6f}")
    page.click("#predict-button")
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    expect(page.locator("#oh")).to_contain_text("12 + log(O/H) = ")
    expect(page.locator("#mass")).to_be_empty()
    expect(page.locator("#mzr")).to_be_hidden()
    expect(page.locator("#mzr svg")).to_have_count(0)
    expect(page.locator("#flags")).to_be_hidden()
    page.screenshot(path=str(shots / "page-single-oh.png"), full_page=True)
    page.close()
