"""The database layer: migrations, the result and cutout caches, concurrent idempotent writes.

Every database test runs on SQLite (a temporary file) and on PostgreSQL. The PostgreSQL runs
use a fresh database per test, created on the server at ``GALMET_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and dropped afterwards; they skip, with the
reason, when that server does not answer.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from galmet.app.cache import (
    CELL_DEG,
    find_image,
    find_sky,
    get_cutout,
    separation_arcsec,
    sky_key,
    store_cutout,
    store_prediction,
)
from galmet.app.db import (
    alembic_config,
    check,
    make_engine,
    safe_url,
    sessionmaker_for,
    upgrade,
)
from galmet.app.models import Base, Cutout, Prediction
from galmet.cli import main

MODEL = "a" * 64  # a model version (checkpoint SHA-256)
OTHER_MODEL = "b" * 64
SHA = "0123456789abcdef" * 4
ARCSEC = 1 / 3600


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def new_session(engine: Engine) -> Callable[[], Session]:
    return sessionmaker_for(engine)


@pytest.fixture
def session(new_session: Callable[[], Session]) -> Iterator[Session]:
    with new_session() as session:
        yield session


def store_sky(session: Session, ra: float, dec: float, **kw) -> Prediction:
    values = {
        "model_version": MODEL,
        "tta": 8,
        "outputs": {"oh_p50": 9.01, "lgm_tot_p50": 10.2},
        "sigma": {"oh_p50": 0.08, "lgm_tot_p50": 0.2},
        "tta_spread": {"oh_p50": 0.01, "lgm_tot_p50": 0.02},
        "flags": [],
    }
    return store_prediction(session, ra=ra, dec=dec, **{**values, **kw})


def offset(ra: float, dec: float, east: float = 0.0, north: float = 0.0) -> tuple[float, float]:
    """The position ``east`` and ``north`` arcseconds away (small offsets; RA wraps)."""
    return (ra + east * ARCSEC / math.cos(math.radians(dec))) % 360, dec + north * ARCSEC


def count(session: Session, model: type[Base]) -> int:
    return session.scalar(select(func.count()).select_from(model))


# --- migrations and the command line -----------------------------------------------------------


def test_upgrade_creates_the_tables_and_is_idempotent(database_url):
    upgrade(database_url)
    upgrade(database_url)  # a second run changes nothing and does not fail
    engine = make_engine(database_url)
    try:
        tables = {"predictions", "cutouts", "jobs", "job_chunks", "job_targets"}
        assert tables | {"alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        assert current == head == "0005"
    finally:
        engine.dispose()


def test_migrations_match_the_models(engine):
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diffs == []


def test_concurrent_upgrades_take_turns(database_url):
    # Service processes (and threads) starting together all run upgrade(): none may fail.
    script = f"from app.db import upgrade; upgrade({database_url!r})"
    processes = [
        subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upgrade, [database_url] * 4))
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    engine = make_engine(database_url)
    try:
        assert "predictions" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_galmet_db_upgrade_command(database_url, capsys):
    assert main(["db", "upgrade", "--database-url", database_url]) == 0
    assert "latest migration" in capsys.readouterr().out
    engine = make_engine(database_url)
    try:
        assert {"predictions", "cutouts"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_galmet_db_upgrade_runs_from_any_directory(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "-m", "galmet", "db", "upgrade", "--database-url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "elsewhere.sqlite3").is_file()


def test_galmet_db_upgrade_default_url_comes_from_settings(tmp_path, monkeypatch):
    from galmet.app.core.config import get_settings

    path = tmp_path / "from-settings.sqlite3"
    monkeypatch.setenv("GALMET_DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0
    finally:
        get_settings.cache_clear()
    assert path.is_file()


def test_unreachable_database_is_one_line_error(capsys):
    assert main(["db", "upgrade", "--database-url", "postgresql://postgres@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("galmet: error: cannot use the database:")
    assert len(err.strip().splitlines()) == 1


def test_bad_database_url_is_one_line_error(capsys):
    assert main(["db", "upgrade", "--database-url", "nosuchdb://x"]) == 2
    assert capsys.readouterr().err.startswith("galmet: error: bad --database-url")


def test_urls_get_psycopg_3_and_hide_passwords():
    assert safe_url("postgresql://galmet:s3cret@db/galmet") == (
        "postgresql+psycopg://galmet:***@db/galmet"
    )
    assert safe_url("sqlite:////tmp/x.sqlite3") == "sqlite:////tmp/x.sqlite3"


def test_check(engine):
    assert check(engine)
    dead = make_engine("postgresql://postgres@127.0.0.1:1/x")
    assert not check(dead)
    dead.dispose()


def test_import_alembic_is_the_library_not_the_migrations_folder():
    import alembic
    import alembic.command

    assert alembic.__file__ is not None and "site-packages" in alembic.__file__
    done = subprocess.run(
        [sys.executable, "-c", "import alembic.command, alembic; print(alembic.__file__)"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "site-packages" in done.stdout, done.stderr


# --- sky keys ------------------------------------------------------------------------------------


def test_sky_key_cells_are_about_a_third_of_an_arcsecond():
    assert sky_key(150.1, 2.2) == sky_key(150.1, 2.2)
    ra, dec = 150.1, 2.2
    assert sky_key(ra, dec) != sky_key(*offset(ra, dec, north=1.0))
    assert sky_key(ra, dec) != sky_key(*offset(ra, dec, east=1.0))
    # RA wraps: just below 360 is the last column, 0 the first; the poles are fine.
    row, column = sky_key(359.9999999, 10).split(":")
    assert int(column) > 0 and sky_key(0.0, 10).endswith(":0")
    assert sky_key(0, 90) == sky_key(0, 90 - 1e-9)
    assert sky_key(0, -90).startswith("0:")


@pytest.mark.parametrize(
    ("ra", "dec"), [(360.0, 0.0), (-0.1, 0.0), (0.0, 90.1), (0.0, -91.0), (math.nan, 0.0)]
)
def test_positions_off_the_sky_are_refused(ra, dec):
    with pytest.raises(ValueError):
        sky_key(ra, dec)


def test_separation():
    assert separation_arcsec(10, 0, 10, 1 * ARCSEC) == pytest.approx(1.0)
    assert separation_arcsec(359.99999, 0, 0.00001, 0) == pytest.approx(0.072, rel=1e-6)
    assert separation_arcsec(0, 90, 180, 90) == pytest.approx(0.0, abs=1e-9)


# --- the prediction cache -------------------------------------------------------------------------


def test_store_and_find_by_sky_position(session):
    stored = store_sky(session, 150.1, 2.2, kind="sky", flags=["no_source_at_centre"])
    assert stored.id is not None and stored.kind == "sky"
    found = find_sky(session, 150.1, 2.2, MODEL, 8)
    assert found is not None and found.id == stored.id
    assert found.outputs == {"oh_p50": 9.01, "lgm_tot_p50": 10.2}
    assert found.sigma["oh_p50"] == 0.08 and found.tta_spread["lgm_tot_p50"] == 0.02
    assert found.flags == ["no_source_at_centre"]
    assert (found.ra, found.dec, found.model_version, found.tta) == (150.1, 2.2, MODEL, 8)
    assert found.created_at is not None


@pytest.mark.parametrize(
    ("east", "north"), [(0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1), (0.07, 0.07), (0.45, 0)]
)
def test_a_position_within_half_an_arcsecond_hits(session, east, north):
    stored = store_sky(session, 150.1, 2.2)
    found = find_sky(session, *offset(150.1, 2.2, east, north), MODEL, 8)
    assert found is not None and found.id == stored.id


@pytest.mark.parametrize(("east", "north"), [(1, 0), (0, 1), (0, -1), (0.55, 0), (0.4, 0.4)])
def test_a_position_further_than_half_an_arcsecond_misses(session, east, north):
    store_sky(session, 150.1, 2.2)
    assert find_sky(session, *offset(150.1, 2.2, east, north), MODEL, 8) is None


def test_jitter_across_a_cell_edge_hits(session):
    # Two positions 0.1" apart on either side of a Dec row edge, then of an RA column edge.
    row = math.floor((2.2 + 90) / CELL_DEG)
    edge = -90 + row * CELL_DEG
    below, above = (150.1, edge - 0.05 * ARCSEC), (150.1, edge + 0.05 * ARCSEC)
    assert sky_key(*below) != sky_key(*above)
    stored = store_sky(session, *below)
    assert find_sky(session, *above, MODEL, 8).id == stored.id

    dec = 40.0
    row_middle = -90 + (math.floor((dec + 90) / CELL_DEG) + 0.5) * CELL_DEG
    columns = int(360 * math.cos(math.radians(row_middle)) / CELL_DEG)
    ra_edge = 360 * 123_457 / columns  # the west edge of column 123457
    west, east = offset(ra_edge, dec, east=-0.05), offset(ra_edge, dec, east=0.05)
    assert sky_key(*west) != sky_key(*east)
    stored = store_sky(session, *east)
    assert find_sky(session, *west, MODEL, 8).id == stored.id


def test_ra_wraps_at_zero(session):
    stored = store_sky(session, 359.99999, 10.0)
    assert find_sky(session, 0.00001, 10.0, MODEL, 8).id == stored.id
    assert find_sky(session, 0.001, 10.0, MODEL, 8) is None  # 3.5" away
    other = store_sky(session, 0.00001, -30.0)
    assert find_sky(session, 359.99999, -30.0, MODEL, 8).id == other.id


def test_near_the_poles_every_ra_is_searched(session):
    north = store_sky(session, 10.0, 89.99999)
    # The same distance from the pole, on the other side of it: 0.072" away.
    assert find_sky(session, 190.0, 89.99999, MODEL, 8).id == north.id
    assert find_sky(session, 190.0, 89.9998, MODEL, 8) is None  # 0.76" away
    south = store_sky(session, 0.0, -90.0)
    assert find_sky(session, 123.4, -90.0, MODEL, 8).id == south.id
    assert find_sky(session, 300.0, -89.99999, MODEL, 8).id == south.id


def test_the_nearest_cached_position_wins(session):
    near = store_sky(session, *offset(150.1, 2.2, east=0.1))
    store_sky(session, *offset(150.1, 2.2, east=-0.4))  # another cell
    assert find_sky(session, 150.1, 2.2, MODEL, 8).id == near.id


def test_store_and_find_by_image_hash(session):
    stored = store_prediction(
        session,
        image_sha256=SHA,
        model_version=MODEL,
        tta=4,
        outputs={"oh_p50": 8.7},
        sigma={"oh_p50": 0.1},
        tta_spread={"oh_p50": 0.0},
        flags=["grayscale"],
    )
    assert (stored.kind, stored.ra, stored.dec) == ("image", None, None)
    assert find_image(session, SHA, MODEL, 4).id == stored.id
    assert find_image(session, SHA.upper(), MODEL, 4).id == stored.id
    assert find_image(session, "f" * 64, MODEL, 4) is None
    assert find_image(session, SHA, OTHER_MODEL, 4) is None
    assert find_image(session, SHA, MODEL, 8) is None
    with pytest.raises(ValueError):
        find_image(session, "not-a-hash", MODEL, 4)


def test_another_model_version_or_tta_misses(session):
    store_sky(session, 150.1, 2.2)
    assert find_sky(session, 150.1, 2.2, OTHER_MODEL, 8) is None
    assert find_sky(session, 150.1, 2.2, MODEL, 1) is None
    # ... and each gets its own row.
    mine, theirs = store_sky(session, 150.1, 2.2, tta=1), store_sky(session, 150.1, 2.2)
    assert mine.id != theirs.id
    assert find_sky(session, 150.1, 2.2, MODEL, 1).id == mine.id
    assert count(session, Prediction) == 2


def test_storing_twice_keeps_the_first_row(session):
    first = store_sky(session, 150.1, 2.2)
    again = store_sky(session, 150.1, 2.2, outputs={"oh_p50": 1.0})
    assert again.id == first.id and again.outputs["oh_p50"] == 9.01
    assert count(session, Prediction) == 1


def test_bad_stores_are_refused_and_write_nothing(session):
    with pytest.raises(ValueError):
        store_sky(session, 150.1, 2.2, tta=3)
    with pytest.raises(ValueError):
        store_sky(session, 150.1, 2.2, image_sha256=SHA)
    with pytest.raises(ValueError):
        store_sky(session, 360.0, 2.2)
    with pytest.raises(ValueError):
        store_sky(session, 150.1, 2.2, kind="image")
    # NaN is not JSON: refused on SQLite as on PostgreSQL.
    with pytest.raises((ValueError, StatementError)):
        store_sky(session, 150.1, 2.2, sigma={"oh_p50": math.nan})
    session.rollback()
    assert count(session, Prediction) == 0


def run_together(n: int, work: Callable[[], object]) -> list[object]:
    """Run ``work`` in ``n`` threads released at the same moment; re-raise any error."""
    barrier = threading.Barrier(n)

    def start() -> object:
        barrier.wait()
        return work()

    with ThreadPoolExecutor(n) as pool:
        return [future.result() for future in [pool.submit(start) for _ in range(n)]]


def test_concurrent_identical_stores_leave_one_row(new_session):
    def work() -> int:
        with new_session() as session:
            return store_sky(session, 150.1, 2.2).id

    ids = run_together(20, work)
    assert len(set(ids)) == 1
    with new_session() as session:
        assert count(session, Prediction) == 1


def test_concurrent_identical_image_stores_leave_one_row(new_session):
    def work() -> int:
        with new_session() as session:
            return store_prediction(
                session,
                image_sha256=SHA,
                model_version=MODEL,
                tta=8,
                outputs={"oh_p50": 8.7},
                sigma={"oh_p50": 0.1},
                tta_spread={"oh_p50": 0.0},
            ).id

    assert len(set(run_together(20, work))) == 1
    with new_session() as session:
        assert count(session, Prediction) == 1


# --- the cutout cache -----------------------------------------------------------------------------


def test_store_and_get_cutout(session):
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
    stored = store_cutout(session, ra=150.1, dec=2.2, scale=0.296, size=128, jpeg=jpeg, blank=False)
    found = get_cutout(session, 150.1, 2.2, 0.296, 128)
    assert found is not None and found.id == stored.id
    assert found.jpeg == jpeg and found.blank is False and found.fetched_at is not None
    assert (
        get_cutout(session, *offset(150.1, 2.2, east=0.1, north=-0.1), 0.296, 128).id == stored.id
    )
    assert get_cutout(session, *offset(150.1, 2.2, north=1.0), 0.296, 128) is None
    assert get_cutout(session, 150.1, 2.2, 0.4, 128) is None
    assert get_cutout(session, 150.1, 2.2, 0.296, 64) is None
    blank = store_cutout(session, ra=0.0, dec=-89.0, scale=0.296, size=128, jpeg=b"x", blank=True)
    assert get_cutout(session, 0.0, -89.0, 0.296, 128).blank is True and blank.blank is True
    again = store_cutout(session, ra=150.1, dec=2.2, scale=0.296, size=128, jpeg=b"y", blank=True)
    assert again.id == stored.id and again.jpeg == jpeg
    assert count(session, Cutout) == 2


def test_concurrent_identical_cutout_stores_leave_one_row(new_session):
    def work() -> int:
        with new_session() as session:
            return store_cutout(
                session, ra=359.99999, dec=-5.0, scale=0.296, size=128, jpeg=b"j", blank=False
            ).id

    assert len(set(run_together(20, work))) == 1
    with new_session() as session:
        assert count(session, Cutout) == 1


def test_bulk_stores_keep_order_and_one_row_per_key(session):
    from galmet.app.cache import store_cutouts, store_predictions

    def item(ra: float, oh: float) -> dict:
        return {
            "model_version": MODEL,
            "tta": 8,
            "outputs": {"oh_p50": oh},
            "sigma": {"oh_p50": 0.1},
            "tta_spread": {"oh_p50": 0.0},
            "ra": ra,
            "dec": 1.0,
        }

    earlier = store_sky(session, 12.0, 1.0)
    # A duplicate inside the batch, and a key cached before: one row each, first one wins.
    rows = store_predictions(session, [item(10.0, 9.1), item(11.0, 9.2), item(10.0, 9.3),
                                       item(12.0, 9.4)])  # fmt: skip
    assert [r.outputs["oh_p50"] for r in rows] == [9.1, 9.2, 9.1, earlier.outputs["oh_p50"]]
    assert rows[0].id == rows[2].id and rows[3].id == earlier.id
    assert count(session, Prediction) == 3
    assert store_predictions(session, []) == []

    cut = store_cutouts(
        session, [(10.0, 1.0, 0.4, 64, b"a", False), (10.0, 1.0, 0.4, 64, b"b", True)]
    )
    assert [c.jpeg for c in cut] == [b"a", b"a"] and count(session, Cutout) == 1
