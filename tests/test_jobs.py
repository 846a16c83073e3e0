"""Batch jobs in embedded mode (no broker): the API runs the chunks itself.

Real HTTP on loopback, a real database (SQLite, and PostgreSQL when it answers), the mock
SkyServer. The Celery path, with a real worker and Redis, is in test_jobs_celery.py; both run
the same chunk code.
"""

from __future__ import annotations

import csv
import io
import time

import httpx
import pytest
from astropy.io.votable import parse_single_table

from galmet.training.mock_skyserver import Faults, serve_in_thread
from galmet.training.mock_skyserver import create_app as create_mock
from tests.helpers import galaxy, service

API = "/api/v1"


def mock_stats(skyserver: str) -> dict:
    return httpx.get(skyserver.rsplit("/", 1)[0] + "/mock/stats").json()


def targets_csv(mock_sky, n: int, bad: bool = True) -> tuple[str, list[dict]]:
    """A CSV of the first ``n`` mock galaxies (ids g0…), with three bad rows when ``bad``."""
    rows = [
        {"id": f"g{i}", "ra": galaxy(mock_sky, i)[0], "dec": galaxy(mock_sky, i)[1]}
        for i in range(n)
    ]
    if bad:
        rows.insert(3, {"id": "bad-ra", "ra": 400, "dec": 0})
        rows.insert(10, {"id": "bad-text", "ra": "north", "dec": 1})
        rows.append({"id": "bad-dec", "ra": 10, "dec": "nan"})
    out = io.StringIO()
    writer = csv.DictWriter(out, ["id", "ra", "dec"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue(), rows


def submit(api: str, text: str, name: str = "targets.csv") -> httpx.Response:
    return httpx.post(f"{api}{API}/jobs", files={"file": (name, text, "text/csv")}, timeout=60)


def wait(api: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{api}{API}/jobs/{job_id}", timeout=30).json()
        if status["status"] == "done":
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done in {timeout} s: {status}")


def stored_status(database_url: str, job_id: str) -> dict:
    """The job's status as the database holds it (``GET /jobs/{id}``'s body), read directly:
    for a job whose service is stopped."""
    from galmet.app import db
    from galmet.app.jobs.store import job_status

    engine = db.make_engine(database_url)
    try:
        with db.sessionmaker_for(engine)() as session:
            return job_status(session, job_id)
    finally:
        engine.dispose()


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of a results CSV, past its ``# key: value`` header lines."""
    return list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))


def results(api: str, job_id: str) -> dict[str, object]:
    """The results in all three formats, parsed."""
    base = f"{api}{API}/jobs/{job_id}/results"
    as_json = httpx.get(base, timeout=60).json()
    as_csv = read_csv(httpx.get(f"{base}?format=csv", timeout=60).text)
    vot = httpx.get(f"{base}?format=votable", timeout=60)
    assert vot.headers["content-type"].startswith("application/x-votable+xml")
    table = parse_single_table(io.BytesIO(vot.content)).to_table()
    return {"json": as_json, "csv": as_csv, "votable": table}


@pytest.fixture
def api(tiny_model, mock_skyserver, database_url, tmp_path):
    with service(
        tiny_model, mock_skyserver, database_url, tmp_path, job_chunk_size=32, skyserver_rate=0
    ) as url:
        yield url


def test_csv_job_every_row_in_three_formats_then_cached(api, mock_sky, mock_skyserver):
    text, rows = targets_csv(mock_sky, 200)
    before = mock_stats(mock_skyserver)["getjpeg"]
    r = submit(api, text)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"].endswith(f"/jobs/{job['id']}")
    assert job["n_targets"] == 203 and job["counts"]["invalid"] == 3
    assert job["n_chunks"] == 7  # 200 valid rows in chunks of 32
    done = wait(api, job["id"])
    assert done["counts"] == {"queued": 0, "done": 200, "failed": 0, "invalid": 3}
    assert done["progress"] == 1.0 and done["finished_at"] is not None
    assert mock_stats(mock_skyserver)["getjpeg"] - before == 200

    got = results(api, job["id"])
    for name in ("json", "csv", "votable"):
        assert len(got[name]) == 203, name
    by_row = {r["row"]: r for r in got["json"]}
    assert sorted(by_row) == list(range(1, 204))
    for i, row in enumerate(rows, start=1):
        out = by_row[i]
        assert out["id"] == row["id"]
        if row["id"].startswith("bad"):
            assert out["status"] == "invalid" and out["reason"] and out["oh_p50"] is None
        else:
            assert out["status"] == "done" and out["cached"] is False
            assert 7 < out["oh_p50"] < 11 and out["oh_sigma"] > 0
            assert out["log_mstar"] is not None
    # The same numbers in CSV and VOTable.
    for out, line, vrow in zip(got["json"], got["csv"], got["votable"], strict=True):
        assert line["id"] == out["id"] and line["status"] == out["status"]
        if out["oh_p50"] is not None:
            assert float(line["oh_p50"]) == pytest.approx(out["oh_p50"], abs=1e-6)
            assert float(vrow["oh_p50"]) == pytest.approx(out["oh_p50"], abs=1e-6)
        else:
            assert line["oh_p50"] == "" and line["reason"]
    # A job's prediction is the service's prediction for that position (one cache).
    g = by_row[1]
    where = {"ra": g["galmet_ra"], "dec": g["galmet_dec"]}  # ra, dec: the input's text
    single = httpx.get(f"{api}{API}/predict", params=where).json()
    assert single["cached"] is True and single["oh_p50"] == pytest.approx(g["oh_p50"], abs=5e-5)

    # Resubmitted: answered from the cache, SkyServer not asked again.
    before = mock_stats(mock_skyserver)["getjpeg"]
    again = wait(api, submit(api, text).json()["id"])
    assert again["counts"]["done"] == 200
    assert mock_stats(mock_skyserver)["getjpeg"] == before
    rerun = results(api, again["id"])["json"]
    assert all(r["cached"] for r in rerun if r["status"] == "done")
    assert [r["oh_p50"] for r in rerun] == [r["oh_p50"] for r in got["json"]]


def test_json_job_and_sexagesimal(api, mock_sky):
    ra, dec = galaxy(mock_sky, 5)
    body = [{"ra": ra, "dec": dec, "id": 7}, {"ra": "not a number", "dec": 0}]
    r = httpx.post(f"{api}{API}/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    done = wait(api, r.json()["id"])
    assert done["counts"] == {"queued": 0, "done": 1, "failed": 0, "invalid": 1}
    assert done["source"] == "json"
    rows = results(api, done["id"])["json"]
    assert rows[0]["id"] == 7 and rows[0]["galmet_id"] == "7"  # the input's, then galmet's
    assert rows[0]["status"] == "done"
    assert rows[1]["status"] == "invalid" and "ra" in rows[1]["reason"]


@pytest.mark.parametrize(
    ("content", "name", "ctype", "status", "words"),
    [
        ("", "t.csv", "text/csv", 422, "no targets"),
        ("id,ra\na,1\n", "t.csv", "text/csv", 422, "dec"),
        ("id,ra,dec\n" + "x,1,1\n" * 6, "t.csv", "text/csv", 413, "more than 5"),
        ("GIF89a....", "t.gif", "image/gif", 415, ""),
    ],
)
def test_bad_job_files_get_a_4xx_and_write_nothing(
    tiny_model, mock_skyserver, tmp_path, content, name, ctype, status, words
):
    url = f"sqlite:///{tmp_path}/bad.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path, max_job_targets=5) as api:
        r = httpx.post(f"{api}{API}/jobs", files={"file": (name, content, ctype)}, timeout=30)
        assert r.status_code == status, r.text
        assert words in r.json()["detail"] and "\n" not in r.json()["detail"]
        # Nothing half-written: no job rows at all.
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM job_targets")).scalar() == 0
        engine.dispose()
        assert httpx.get(f"{api}{API}/healthz").status_code == 200


def test_unknown_job_ids_are_404(api):
    for job_id in ("4f1c1a52-1d2e-4b7a-9d7e-3f2a1b0c9d8e", "nope", "4F1C1A52-1d2e"):
        for suffix in ("", "/results"):
            r = httpx.get(f"{api}{API}/jobs/{job_id}{suffix}")
            assert r.status_code == 404, (job_id, suffix)
            assert "no job" in r.json()["detail"]


def test_skyserver_failures_end_as_failed_rows_and_the_job_completes(
    tiny_model, mock_sky, tmp_path
):
    text, _ = targets_csv(mock_sky, 40, bad=False)
    faults = Faults(fail_rate=0.5, timeout_rate=0.1, hang_seconds=3, seed=3)
    url = f"sqlite:///{tmp_path}/faults.sqlite3"
    with (
        serve_in_thread(create_mock(mock_sky, faults)) as flaky,
        service(tiny_model, flaky, url, tmp_path, skyserver_timeout=0.5, job_chunk_size=16) as api,
    ):
        job = submit(api, text).json()
        assert httpx.get(f"{api}{API}/healthz", timeout=5).status_code == 200
        done = wait(api, job["id"])
        rows = results(api, job["id"])["json"]
    counts = done["counts"]
    assert counts["done"] > 0 and counts["failed"] > 0
    assert counts["done"] + counts["failed"] == 40 and counts["queued"] == 0
    reasons = {r["reason"].split(":")[0] for r in rows if r["status"] == "failed"}
    assert reasons <= {"502", "504"} and "502" in reasons
    assert all(r["oh_p50"] is not None for r in rows if r["status"] == "done")


def test_an_interrupted_embedded_job_resumes_when_the_service_starts_again(
    tiny_model, mock_sky, tmp_path
):
    text, _ = targets_csv(mock_sky, 60, bad=False)
    url = f"sqlite:///{tmp_path}/resume.sqlite3"
    slow = Faults(latency=0.3)
    with serve_in_thread(create_mock(mock_sky, slow)) as sky:
        with service(tiny_model, sky, url, tmp_path, job_chunk_size=10) as api:
            job = submit(api, text).json()
            deadline = time.monotonic() + 60
            while httpx.get(f"{api}{API}/jobs/{job['id']}").json()["counts"]["done"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        # Stopped mid-job: started, not finished (read from the database, with nothing running).
        stopped = stored_status(url, job["id"])
        assert stopped["status"] != "done" and stopped["finished_at"] is None, stopped
        assert stopped["counts"]["done"] > 0 and stopped["counts"]["queued"] > 0, stopped
        # The next start picks the unfinished chunks up again.
        with service(tiny_model, sky, url, tmp_path, job_chunk_size=10) as api:
            done = wait(api, job["id"])
            rows = results(api, job["id"])["json"]
    assert done["counts"] == {"queued": 0, "done": 60, "failed": 0, "invalid": 0}
    assert [r["row"] for r in rows] == list(range(1, 61))
    assert len({r["id"] for r in rows}) == 60


def test_metrics_and_readiness(api, mock_sky):
    ready = httpx.get(f"{api}{API}/readyz").json()
    assert ready["checks"]["broker"].startswith("not used")
    ra, dec = galaxy(mock_sky, 9)
    httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec})
    httpx.get(f"{api}{API}/jobs/4f1c1a52-1d2e-4b7a-9d7e-3f2a1b0c9d8e")
    text = httpx.get(f"{api}/metrics").text
    # One series per route template, not one per job id.
    assert 'route="/api/v1/jobs/{job_id}",status="404"' in text
    assert 'galmet_http_request_duration_seconds_count{method="GET",route="/api/v1/predict"' in text
    for name in (
        "galmet_queue_depth",
        "galmet_inference_batch_size_bucket",
        "galmet_images_total",
        "galmet_images_per_second",
    ):
        assert name in text, name


# ---------------------------------------------------------------------------- lost chunks
def _job_in(database_url: str, n: int = 5, chunk_size: int = 2):
    from galmet.app import db
    from galmet.app.jobs import store
    from galmet.app.targets import TargetRow

    db.upgrade(database_url)
    sessions = db.sessionmaker_for(db.make_engine(database_url))
    rows = [TargetRow(i + 1, None, 10.0 + i, 1.0, None) for i in range(n)]
    with sessions() as session:
        job = store.insert_job(
            session, rows, model_version="a" * 64, tta=1, chunk_size=chunk_size,
            source="json", filename=None,
        )  # fmt: skip
    return sessions, job


def test_stalled_chunks_are_found_by_heartbeat_or_by_an_empty_queue(database_url):
    from datetime import timedelta

    from sqlalchemy import update

    from galmet.app.jobs import recovery as jobs
    from galmet.app.jobs.store import now
    from galmet.app.models import JobChunk

    sessions, job = _job_in(database_url)
    with sessions() as s:
        assert jobs.stalled_chunks(s, 60, queue_empty=True) == []  # just sent
        old = now() - timedelta(seconds=120)
        s.execute(update(JobChunk).values(enqueued_at=old))
        s.execute(update(JobChunk).where(JobChunk.chunk == 1).values(heartbeat_at=old))
        s.execute(update(JobChunk).where(JobChunk.chunk == 2).values(heartbeat_at=now()))
        s.commit()
        # Chunk 1's runner went quiet; chunk 0 was never picked up; chunk 2 is running.
        assert jobs.stalled_chunks(s, 60, queue_empty=False) == [(job.id, 1)]
        assert sorted(jobs.stalled_chunks(s, 60, queue_empty=True)) == [(job.id, 0), (job.id, 1)]
        jobs.mark_enqueued(s, [(job.id, 0), (job.id, 1)])
        assert jobs.stalled_chunks(s, 60, queue_empty=True) == []


def test_a_chunk_that_never_finishes_is_given_up_with_a_reason(database_url):
    from sqlalchemy import update

    from galmet.app.jobs.recovery import give_up
    from galmet.app.jobs.store import job_results, job_status
    from galmet.app.models import JobChunk

    sessions, job = _job_in(database_url, n=3, chunk_size=2)
    with sessions() as s:
        s.execute(update(JobChunk).where(JobChunk.chunk == 0).values(attempts=5))
        s.commit()
        assert give_up(s, [(job.id, 0), (job.id, 1)], max_attempts=5) == [(job.id, 0)]
        status = job_status(s, job.id)
        assert status["counts"] == {"queued": 1, "done": 0, "failed": 2, "invalid": 0}
        assert status["status"] != "done"
        rows = job_results(s, job.id)
        assert "started 5 times" in rows[0]["reason"] and rows[2]["status"] == "queued"
        s.execute(update(JobChunk).where(JobChunk.chunk == 1).values(attempts=5))
        s.commit()
        give_up(s, [(job.id, 1)], max_attempts=5)
        assert job_status(s, job.id)["status"] == "done"
