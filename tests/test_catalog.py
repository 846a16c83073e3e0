"""``galmet catalog``: the sample-selection query, and paging it against the mock SkyServer."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from astropy.table import Table

from galmet.cli import main as galmet
from galmet.errors import GalmetError
from galmet.training import sample
from galmet.training.catalog import MAX_PAGE_SIZE, build_query, skyserver_base_url
from galmet.training.mock_skyserver import Faults, create_app, serve_in_thread
from galmet.training.sample import CATALOG_COLUMNS


def root(base_url: str) -> str:
    return base_url.rsplit("/", 1)[0]


def squash(sql: str) -> str:
    return " ".join(sql.split())


def run_catalog(capsys, *args: str) -> tuple[int, str]:
    code = galmet(["catalog", *args])
    return code, capsys.readouterr().err


def sql_requests(base_url: str) -> int:
    return httpx.get(root(base_url) + "/mock/stats").json()["sqlsearch"]


# --- the query -------------------------------------------------------------------------


def test_build_query_has_every_cut():
    q = squash(build_query(after_objid=1237645876861272064, top=1000, with_mass=False))
    assert q.startswith("SELECT TOP 1000 ")
    cuts = [
        "p.petroMag_r > 10 AND p.petroMag_r < 18",
        "p.modelMag_u - p.modelMag_r > 0 AND p.modelMag_u - p.modelMag_r < 6",
        *(f"p.modelMag_{b} > 10 AND p.modelMag_{b} < 25" for b in "ugriz"),
        "s.rChi2 < 2",
        "s.zErr > 0 AND s.zErr < 0.01",
        "s.z > 0.02",
        "e.oh_p50 != -9999",
    ]
    for cut in cuts:
        assert cut in q, cut
    assert "lgm_tot_p50 > 0" not in q
    # Paging by objID, and the joins of the design.
    assert "p.objID > 1237645876861272064" in q
    assert q.endswith("ORDER BY p.objID, s.zErr")
    assert "FROM Galaxy AS p" in q
    assert "JOIN SpecObj AS s ON s.bestObjID = p.objID" in q
    assert "JOIN GalSpecInfo AS i ON i.specObjID = s.specObjID" in q
    assert "JOIN GalSpecExtra AS e ON e.specObjID = s.specObjID" in q


def test_build_query_selects_the_catalog_columns_in_order():
    q = squash(build_query(0, 10))
    select = q[len("SELECT TOP 10 ") : q.index(" FROM ")]
    names = [item.strip().split(".")[1] for item in select.split(",")]
    assert names == CATALOG_COLUMNS


def test_build_query_with_mass():
    q = squash(build_query(0, 10, with_mass=True))
    assert "e.lgm_tot_p50 > 0" in q
    assert "e.oh_p50 != -9999" in q


@pytest.mark.parametrize(
    ("url", "release", "expected"),
    [
        (None, None, "https://skyserver.sdss.org/dr17"),
        ("http://127.0.0.1:5000/dr16/", None, "http://127.0.0.1:5000/dr16"),
        ("http://127.0.0.1:5000/dr16", "dr17", "http://127.0.0.1:5000/dr17"),
        ("http://127.0.0.1:5000", None, "http://127.0.0.1:5000/dr17"),
        ("http://127.0.0.1:5000/sky", "dr18", "http://127.0.0.1:5000/sky/dr18"),
    ],
)
def test_skyserver_base_url(monkeypatch, url, release, expected):
    monkeypatch.delenv("GALMET_SKYSERVER_URL", raising=False)
    assert skyserver_base_url(url, release) == expected


def test_skyserver_base_url_from_environment(monkeypatch):
    monkeypatch.setenv("GALMET_SKYSERVER_URL", "http://mock:1234/dr17")
    assert skyserver_base_url(None, None) == "http://mock:1234/dr17"
    assert skyserver_base_url("http://other/dr16", None) == "http://other/dr16"
    with pytest.raises(GalmetError):
        skyserver_base_url("ftp://x/dr17", None)
    with pytest.raises(GalmetError):
        skyserver_base_url(None, "17")


# --- end to end over HTTP --------------------------------------------------------------


def test_catalog_pages_to_exactly_the_mock_sample(tmp_path, capsys, mock_sky, mock_skyserver):
    httpx.post(root(mock_skyserver) + "/mock/reset")
    out = tmp_path / "catalog.csv"
    code, err = run_catalog(
        capsys, "--out", str(out), "--skyserver", mock_skyserver, "--page-size", "60"
    )
    assert code == 0, err
    assert sql_requests(mock_skyserver) == 4  # 60 + 60 + 60 + 20 rows

    got = Table.read(out, format="ascii.csv")
    want = mock_sky.catalog()
    assert got.colnames == CATALOG_COLUMNS
    assert got["objID"].dtype == np.int64
    missing = sorted(set(want["objID"]) - set(got["objID"]))
    extra = sorted(set(got["objID"]) - set(want["objID"]))
    assert not missing and not extra, f"SQL cuts disagree: missing {missing}, extra {extra}"
    assert list(got["objID"]) == list(want["objID"])
    for column in CATALOG_COLUMNS:
        np.testing.assert_array_equal(got[column], want[column], err_msg=column)


# One sample row is broken per entry, each just across the edge of one cut.
BROKEN = [
    {"petroMag_r": 18.0},
    {"petroMag_r": 10.0},
    {"modelMag_u": "r - 0.5"},  # u - r < 0
    {"modelMag_u": "r + 6.5"},  # u - r > 6
    {"modelMag_g": 25.0},
    {"modelMag_i": 10.0},
    {"modelMag_z": 25.5},
    {"modelMag_g": 9.5},
    {"rChi2": 2.0},
    {"zErr": 0.0},
    {"zErr": 0.01},
    {"z": 0.02},
    {"oh_p50": -9999.0},
    {"lgm_tot_p50": -9999.0},  # only cut with --with-mass
    {"lgm_tot_p50": 0.0},
]


@pytest.mark.parametrize("with_mass", [False, True])
def test_catalog_cuts_match_sample_cuts_at_every_edge(tmp_path, capsys, mock_sky, with_mass):
    pop = mock_sky.population.copy()
    rows = np.flatnonzero(mock_sky.in_sample)[: len(BROKEN)]
    for row, change in zip(rows, BROKEN, strict=True):
        for column, value in change.items():
            if isinstance(value, str):  # u relative to r
                value = pop["modelMag_r"][row] + float(value.split()[-1]) * (
                    1 if "+" in value else -1
                )
            pop[column][row] = value
    want = pop[sample.mask(pop, with_mass=with_mass)]["objID"]
    assert len(want) == len(pop[mock_sky.in_sample]) - len(BROKEN) + (0 if with_mass else 2)

    sky = SimpleNamespace(population=pop)  # the SQL side needs nothing else
    out = tmp_path / "catalog.csv"
    flags = ["--with-mass"] if with_mass else []
    with serve_in_thread(create_app(sky)) as url:
        code, err = run_catalog(capsys, "--out", str(out), "--skyserver", url, *flags)
    assert code == 0, err
    got = Table.read(out, format="ascii.csv")["objID"]
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing and not extra, f"SQL cuts disagree: missing {missing}, extra {extra}"
    assert list(got) == list(want)


def test_catalog_limit(tmp_path, capsys, mock_sky, mock_skyserver):
    httpx.post(root(mock_skyserver) + "/mock/reset")
    out = tmp_path / "catalog.csv"
    code, err = run_catalog(
        capsys,
        "--out",
        str(out),
        "--skyserver",
        mock_skyserver,
        "--page-size",
        "60",
        "--limit",
        "75",
    )
    assert code == 0, err
    got = Table.read(out, format="ascii.csv")
    assert list(got["objID"]) == list(mock_sky.catalog()["objID"][:75])
    assert sql_requests(mock_skyserver) == 2  # 60 + 15


def test_catalog_http_500_is_one_error_line(tmp_path, capsys, mock_sky):
    out = tmp_path / "catalog.csv"
    with serve_in_thread(create_app(mock_sky, faults=Faults(fail_rate=1.0))) as url:
        code, err = run_catalog(capsys, "--out", str(out), "--skyserver", url, "--retries", "1")
        assert sql_requests(url) == 2  # the first try and one retry
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "galmet: error:" in line]
    assert len(errors) == 1
    assert "HTTP 500" in errors[0]
    assert not out.exists()


def test_catalog_wrong_url_is_one_error_line(tmp_path, capsys, mock_skyserver):
    out = tmp_path / "catalog.csv"
    code, err = run_catalog(
        capsys, "--out", str(out), "--skyserver", root(mock_skyserver) + "/x/dr17"
    )
    assert code == 2
    assert "Traceback" not in err
    assert "galmet: error:" in err and "404" in err


def test_catalog_unreachable_server(tmp_path, capsys):
    with serve_in_thread(lambda scope, receive, send: None) as url:
        pass  # a port that was free a moment ago and is closed now
    code, err = run_catalog(
        capsys, "--out", str(tmp_path / "c.csv"), "--skyserver", url, "--retries", "0"
    )
    assert code == 2
    assert "Traceback" not in err and "galmet: error:" in err


@pytest.mark.parametrize(
    "args", [["--page-size", "0"], ["--page-size", str(MAX_PAGE_SIZE + 1)], ["--limit", "0"]]
)
def test_catalog_rejects_bad_options(tmp_path, capsys, args):
    code, err = run_catalog(
        capsys, "--out", str(tmp_path / "c.csv"), "--skyserver", "http://127.0.0.1:9/dr17", *args
    )
    assert code == 2
    assert err.startswith("galmet: error:")
