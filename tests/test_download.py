"""``galmet download`` end to end against the mock SkyServer over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import csv
from pathlib import Path

import httpx
import pytest
from astropy.table import Table, vstack

from galmet.cli import main as cli_main
from galmet.errors import GalmetError
from galmet.images import decode_jpeg
from galmet.skyserver import SkyServerClient
from galmet.training.download import DownloadSummary, download_cutouts
from galmet.training.mock_population import FOOTPRINT
from galmet.training.mock_skyserver import Faults, create_app, serve_in_thread
from galmet.training.mocksky import MockSky

N = 16
OFF_FOOTPRINT_ID = 999


@pytest.fixture
def sky(mock_sky: MockSky) -> MockSky:
    return mock_sky


@pytest.fixture
def catalog(mock_sky: MockSky) -> Table:
    """N sample galaxies plus one row off the imaging footprint."""
    cat = mock_sky.catalog()[:N]["objID", "ra", "dec"]
    off = Table({"objID": [OFF_FOOTPRINT_ID], "ra": [FOOTPRINT[0] - 30.0], "dec": [10.0]})
    return vstack([cat, off])


def stats_of(url: str):
    """A function returning the request counts of the mock SkyServer at ``url``."""
    root = url.rsplit("/", 1)[0]
    return lambda: httpx.get(f"{root}/mock/stats").json()


@contextlib.contextmanager
def faulty_skyserver(sky: MockSky, **faults):
    """Yield (base URL, stats()) of a mock SkyServer of its own, with the given faults."""
    with serve_in_thread(create_app(sky, faults=Faults(**faults))) as url:
        yield url, stats_of(url)


def download(url: str, catalog: Table, out: Path, **kwargs) -> DownloadSummary:
    client_kwargs = {"rate": None, "backoff": 0.01, "timeout": 5.0}
    client_kwargs |= {k: kwargs.pop(k) for k in list(kwargs) if k in ("retries", "timeout")}

    async def go() -> DownloadSummary:
        async with SkyServerClient(url, **client_kwargs) as client:
            return await download_cutouts(catalog, out, client, progress=False, **kwargs)

    return asyncio.run(go())


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_complete(sky: MockSky, catalog: Table, out: Path) -> None:
    """Every in-footprint galaxy has its exact cutout; the off-footprint one is in blank.csv;
    nothing else is in images/."""
    images = out / "images"
    for row in catalog[:N]:
        data = (images / f"{row['objID']}.jpg").read_bytes()
        assert decode_jpeg(data).shape == (128, 128, 3)
        assert data == sky.cutout_jpeg(row["ra"], row["dec"])
    assert sorted(p.name for p in images.iterdir()) == sorted(
        f"{i}.jpg" for i in catalog["objID"][:N]
    )
    assert [int(r["objID"]) for r in read_csv(out / "blank.csv")] == [OFF_FOOTPRINT_ID]


def test_download_clean(sky, catalog, tmp_path, mock_skyserver):
    stats = stats_of(mock_skyserver)
    before = stats()["getjpeg"]
    summary = download(mock_skyserver, catalog, tmp_path)
    assert stats()["getjpeg"] - before == N + 1
    assert (summary.fetched, summary.skipped, summary.blank, summary.failed) == (N, 0, 1, 0)
    assert summary.ok
    assert_complete(sky, catalog, tmp_path)
    assert read_csv(tmp_path / "failed.csv") == []


def test_download_survives_faults(sky, catalog, tmp_path):
    faults = {
        "fail_rate": 0.3,
        "truncate_rate": 0.3,
        "timeout_rate": 0.1,
        "hang_seconds": 2.0,
        "latency": 0.05,
        "seed": 1,
    }
    with faulty_skyserver(sky, **faults) as (url, stats):
        summary = download(url, catalog, tmp_path, retries=10, timeout=0.5)
        injected = stats()["injected"]
    assert summary.failed == 0, summary.failures
    assert (summary.fetched, summary.blank) == (N, 1)
    assert injected["fail"] > 0 and injected["truncate"] > 0 and injected["timeout"] > 0
    assert summary.requests > N + 1  # the retries happened
    assert_complete(sky, catalog, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume(sky, catalog, tmp_path, mock_skyserver):
    images = tmp_path / "images"
    url, stats = mock_skyserver, stats_of(mock_skyserver)
    download(url, catalog, tmp_path)
    first = stats()["getjpeg"]

    # Second run: nothing to fetch, not even the known blank.
    summary = download(url, catalog, tmp_path)
    assert stats()["getjpeg"] == first
    assert (summary.fetched, summary.skipped, summary.blank, summary.requests) == (0, N, 1, 0)

    # A truncated file, a missing one and a stale temp file from a killed run.
    truncated = images / f"{catalog['objID'][0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:500])
    (images / f"{catalog['objID'][1]}.jpg").unlink()
    (images / f".{catalog['objID'][2]}.jpg.abc123.tmp").write_bytes(b"partial")
    summary = download(url, catalog, tmp_path)
    assert stats()["getjpeg"] == first + 2
    assert (summary.fetched, summary.skipped, summary.blank) == (2, N - 2, 1)
    assert_complete(sky, catalog, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))

    # A run over part of the catalog keeps the blanks found before.
    summary = download(url, catalog, tmp_path, limit=3)
    assert (summary.skipped, summary.requests) == (3, 0)
    assert [int(r["objID"]) for r in read_csv(tmp_path / "blank.csv")] == [OFF_FOOTPRINT_ID]


def test_limit_and_duplicates(catalog, tmp_path, mock_skyserver):
    doubled = vstack([catalog[:3], catalog[:3]])
    summary = download(mock_skyserver, doubled, tmp_path, limit=2)
    assert (summary.fetched, summary.requests) == (2, 2)
    summary = download(mock_skyserver, doubled, tmp_path / "all")
    assert (summary.fetched, summary.requests) == (3, 3)


def test_stops_when_everything_fails(sky, catalog, tmp_path):
    with faulty_skyserver(sky, fail_rate=1.0) as (url, _):
        summary = download(url, catalog, tmp_path, retries=0, abort_after=3)
    # The workers in flight finish; the rest is left for the next run.
    assert summary.failed >= 3 and summary.not_attempted > 0
    assert summary.failed + summary.not_attempted == N + 1
    assert "3 failures in a row" in summary.aborted and not summary.ok


def write_catalog(catalog: Table, path: Path) -> Path:
    catalog.write(path, format="ascii.csv", overwrite=True)
    return path


def test_cli_always_failing_server(sky, catalog, tmp_path, capsys):
    cat = write_catalog(catalog[:5], tmp_path / "catalog.csv")
    out = tmp_path / "out"
    with faulty_skyserver(sky, fail_rate=1.0) as (url, stats):
        args = ["--catalog", str(cat), "--out", str(out), "--skyserver", url]
        rc = cli_main(["download", *args, "--retries", "1", "--rate", "0"])
        assert stats()["getjpeg"] == 10
    assert rc == 1
    failed = read_csv(out / "failed.csv")
    assert [int(r["objID"]) for r in failed] == sorted(catalog["objID"][:5])
    assert {r["reason"] for r in failed} == {"HTTP 500 (2 attempts)"}
    assert not list((out / "images").iterdir())
    captured = capsys.readouterr()
    assert "fetched 0, skipped 0, blank 0, failed 5" in captured.out
    assert "failed.csv" in captured.err


def test_cli_success_exit_code(sky, catalog, tmp_path, capsys, mock_skyserver):
    cat = write_catalog(catalog, tmp_path / "catalog.csv")
    out = tmp_path / "out"
    args = ["--catalog", str(cat), "--out", str(out), "--skyserver", mock_skyserver]
    rc = cli_main(["download", *args, "--rate", "0"])
    assert rc == 0
    assert f"fetched {N}, skipped 0, blank 1, failed 0" in capsys.readouterr().out
    assert_complete(sky, catalog, out)


def test_cli_reads_skyserver_csv_form(catalog, tmp_path, mock_skyserver):
    cat = tmp_path / "catalog.csv"
    rows = "\n".join(f"{r['objID']},{float(r['ra'])!r},{float(r['dec'])!r}" for r in catalog[:2])
    cat.write_text(f"#Table1\nobjID,ra,dec\n{rows}\n")
    args = ["--catalog", str(cat), "--out", str(tmp_path), "--skyserver", mock_skyserver]
    assert cli_main(["download", *args]) == 0
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2


@pytest.mark.parametrize(
    "content, extra, message",
    [
        (None, [], "catalog file not found"),
        ("objID,ra\n1,150.0\n", [], "lacks column(s) dec"),
        ("objID,ra,dec\n1.5,150.0,2.0\n", [], "objID must be integers"),
        ("objID,ra,dec\n1,10h00m,2.0\n", [], "ra must be numbers"),
        ("objID,ra,dec\n1,150.0,2.0\n", ["--size", "32"], "--size must be between 64 and 2048"),
        ("objID,ra,dec\n1,150.0,2.0\n", ["--skyserver", "sky.org/dr17"], "http(s) URL"),
    ],
)
def test_cli_user_errors(tmp_path, capsys, content, extra, message):
    cat = tmp_path / "catalog.csv"
    if content is not None:
        cat.write_text(content)
    rc = cli_main(["download", "--catalog", str(cat), "--out", str(tmp_path / "o"), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


class RecordingTransport(httpx.AsyncHTTPTransport):
    """Real HTTP that remembers each request's query parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[dict[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.params.append(dict(request.url.params))
        return await super().handle_async_request(request)


@pytest.mark.parametrize("size", [128, 64])
def test_petro_scale_per_row(mock_sky, tmp_path, mock_skyserver, size):
    """--scale-mode petro asks for each row's 2*petroR90_r/0.396/128 x 128/size arcsec/px;
    a row without petroR90_r is not fetched and is listed as failed, saying why."""
    cat = mock_sky.catalog()[:3]["objID", "ra", "dec", "petroR90_r"]
    cat = Table(cat, masked=True)
    cat["petroR90_r"].mask[2] = True
    transport = RecordingTransport()

    async def go() -> DownloadSummary:
        async with SkyServerClient(mock_skyserver, rate=None, transport=transport) as client:
            return await download_cutouts(
                cat, tmp_path, client, size=size, scale_mode="petro", progress=False
            )

    summary = asyncio.run(go())
    assert (summary.fetched, summary.failed) == (2, 1)
    asked = {round(float(p["ra"]), 5): p for p in transport.params}
    assert len(asked) == 2
    for row in cat[:2]:
        params = asked[round(float(row["ra"]), 5)]
        assert int(params["width"]) == size
        want = 2 * float(row["petroR90_r"]) / 0.396 / 128 * 128 / size
        assert float(params["scale"]) == pytest.approx(want, rel=1e-5)
    (failure,) = read_csv(tmp_path / "failed.csv")
    assert int(failure["objID"]) == int(cat["objID"][2]) and "petroR90_r" in failure["reason"]


def test_petro_needs_the_column(catalog, tmp_path, mock_skyserver):
    with pytest.raises(GalmetError, match="petroR90_r column"):
        download(mock_skyserver, catalog, tmp_path, scale_mode="petro")
