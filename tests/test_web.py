"""The web page in headless Chromium (Debian's package, driven by Playwright): load it,
submit coordinates, see the prediction; and see a clear error off the footprint."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import galaxy, service, skip_or_fail

CHROMIUM = shutil.which("chromium")
# The machine's network is closed: keep Chromium from calling home at start.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page_url(tiny_model, mock_skyserver, tmp_path):
    if CHROMIUM is None:
        skip_or_fail("Debian's chromium is not installed (apt-get install chromium)")
    url = f"sqlite:///{tmp_path}/web.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path) as api:
        yield api


def test_page_predicts_from_coordinates(page_url, mock_sky, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ra, dec = galaxy(mock_sky, 9)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        page.goto(page_url + "/")
        expect(page.locator("#model-badge")).to_contain_text("Model tiny")
        page.fill("#ra", f"{ra:.6f}")
        page.fill("#dec", f"{dec:.6f}")
        page.click("#predict-button")
        expect(page.locator("#result")).to_be_visible(timeout=60_000)
        expect(page.locator("#oh")).to_contain_text("12 + log(O/H) = ")
        expect(page.locator("#oh-sigma")).to_contain_text("±")
        expect(page.locator("#details")).to_contain_text("computed now")
        # The cutout the model saw is shown.
        page.wait_for_function("document.getElementById('cutout').naturalWidth > 0")
        page.screenshot(path=str(tmp_path / "page.png"))
        # Again: now from the cache.
        page.click("#predict-button")
        expect(page.locator("#details")).to_contain_text("from the cache", timeout=30_000)
        # Off the footprint: the reason is shown, not a result.
        page.fill("#ra", "20")
        page.fill("#dec", "-40")
        page.click("#predict-button")
        expect(page.locator("#error")).to_contain_text("outside the SDSS imaging footprint")
        expect(page.locator("#result")).to_be_hidden()
        browser.close()


def only_own_site(page, site: str) -> list[str]:
    """Refuse every request of ``page`` that is not to ``site``, as on an air-gapped
    cluster; returns the list the refused URLs are recorded in."""
    from urllib.parse import urlparse

    own = urlparse(site).netloc
    outside: list[str] = []

    def route_request(route) -> None:
        if urlparse(route.request.url).netloc == own:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", route_request)
    return outside


@pytest.mark.parametrize(
    ("path", "operation"), [("/docs", "/api/v1/predict"), ("/redoc", "predict")]
)
def test_api_docs_work_offline(page_url, path, operation):
    """Every request that is not to the service itself is refused, as on an air-gapped
    cluster: the docs pages still list the operations."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        outside = only_own_site(page, page_url)
        response = page.goto(page_url + path)
        expect(page.get_by_text(operation).first).to_be_visible(timeout=30_000)
        # Let lazily drawn parts (ReDoc's sidebar footer links its vendor's logo on a CDN)
        # ask for what they would.
        page.wait_for_load_state("networkidle")
        browser.close()
    assert outside == [], f"the docs page asked the internet for {outside}"
    assert "default-src 'self'" in response.headers["content-security-policy"]
