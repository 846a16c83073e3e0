"""Batch jobs through Celery: the API over loopback, real ``galmet worker`` subprocesses,
real Redis and PostgreSQL, the mock SkyServer; and the faults the design promises to survive.

Skipped with the reason when PostgreSQL or Redis does not answer (``.ci/run`` starts both, and
sets ``GALMET_REQUIRE_SERVICES=1``, under which they fail instead).
The Redis-restart test runs its own ``redis-server`` so it never restarts the shared one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from galmet.app.cache import MATCH_ARCSEC
from galmet.sky import separation_arcsec
from galmet.training.mock_skyserver import Faults, serve_in_thread
from galmet.training.mock_skyserver import create_app as create_mock
from tests.helpers import model_cutouts, offline_predictions, service, skip_or_fail
from tests.test_jobs import API, mock_stats, results, submit, targets_csv, wait

SHARED_REDIS = "redis://127.0.0.1:6379/15"  # a database number of its own, flushed per test
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def broker() -> Iterator[str]:
    if not redis_answers(SHARED_REDIS):
        skip_or_fail(f"Redis does not answer at {SHARED_REDIS}")
    import redis

    redis.Redis.from_url(SHARED_REDIS).flushdb()
    yield SHARED_REDIS
    redis.Redis.from_url(SHARED_REDIS).flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A ``galmet worker`` subprocess in a process group of its own (so SIGKILL takes its
    pool processes too), configured like the API."""

    def __init__(self, tmp_path: Path, env: dict[str, str], name: str) -> None:
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "galmet", "worker", "--concurrency", "1", "--name", name],
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        assert self.proc.poll() is None, f"the worker had already exited:\n{self.text()}"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def settings(tiny_model, skyserver, database_url, broker_url, tmp_path) -> dict:
    """The settings API and workers share (as GALMET_* for the workers)."""
    return {
        "database_url": database_url,
        "broker_url": broker_url,
        "model": str(tiny_model),
        "skyserver_url": skyserver,
        "device": "cpu",
        "tta": "2",
        "cache_dir": str(tmp_path),
        "skyserver_retries": "1",
        "skyserver_timeout": "1.0",
        "skyserver_rate": "0",
        "job_stall_seconds": "3",
        "log_json": "true",
    }


def env_of(values: dict) -> dict[str, str]:
    return {f"GALMET_{k.upper()}": str(v) for k, v in values.items()}


def api_service(tiny_model, values: dict, tmp_path, **extra):
    overrides = {
        k: values[k] for k in ("broker_url", "skyserver_rate", "job_stall_seconds", "log_json")
    }
    return service(
        tiny_model,
        values["skyserver_url"],
        values["database_url"],
        tmp_path,
        job_sweep_seconds=0.5,
        **overrides,
        **extra,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def counts(api: str, job_id: str) -> dict:
    return httpx.get(f"{api}{API}/jobs/{job_id}", timeout=10).json()["counts"]


def assert_one_clean_prediction_per_target(
    database_url: str, job_id: str, rows: list[dict], model: Path, sky
) -> None:
    """Every target of the job is done and points at the one cached prediction of its
    position (exactly one row within the match radius for the job's model and TTA, however
    often its chunk ran, and no other rows at all), and that prediction, as stored and as the
    results give it, is a clean offline run's on the same cutout, to 1e-6 dex (the
    results, rounded to 4 decimals, to 5e-5)."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        version, tta = conn.execute(
            sa.text("SELECT model_version, tta FROM jobs WHERE id = :j"), {"j": job_id}
        ).one()
        targets = conn.execute(
            sa.text(
                "SELECT row, ra, dec, status, prediction_id FROM job_targets"
                " WHERE job_id = :j ORDER BY row"
            ),
            {"j": job_id},
        ).all()
        stored = conn.execute(
            sa.text(
                "SELECT id, ra, dec, outputs FROM predictions"
                " WHERE kind = 'sky' AND model_version = :v AND tta = :t"
            ),
            {"v": version, "t": tta},
        ).all()
    engine.dispose()
    assert len(stored) == len(targets), "one cached prediction per target, no more"
    positions = [(t.ra, t.dec) for t in targets]
    clean = offline_predictions(model, model_cutouts(model, sky, positions), tta)
    for t, row, expected in zip(targets, rows, clean, strict=True):
        assert t.status == "done" and row["row"] == t.row
        seps = separation_arcsec(t.ra, t.dec, [p.ra for p in stored], [p.dec for p in stored])
        near = [p for p, sep in zip(stored, seps, strict=True) if sep <= MATCH_ARCSEC]
        assert len(near) == 1, f"row {t.row}: {len(near)} cached predictions of its position"
        near = near[0]
        assert near.id == t.prediction_id, f"row {t.row} points at another prediction"
        outputs = json.loads(near.outputs) if isinstance(near.outputs, str) else near.outputs
        # the cache keeps the model's raw outputs; the clean run's public fields are rounded
        # to galmet.record.DEX_DECIMALS, so they agree to that rounding
        assert outputs["oh_p50"] == pytest.approx(expected["oh_p50"], abs=5e-5), t.row
        assert outputs["lgm_tot_p50"] == pytest.approx(expected["log_mstar"], abs=5e-5)
        # the results carry 4 decimals in dex
        assert row["oh_p50"] == pytest.approx(expected["oh_p50"], abs=5e-5), t.row
        assert row["oh_sigma"] == pytest.approx(expected["oh_sigma"], abs=5e-5)


def chunk_running(database_url: str, job_id: str) -> bool:
    """Whether a runner has started a chunk of the job and not finished it."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        n = conn.execute(
            sa.text(
                "SELECT count(*) FROM job_chunks"
                " WHERE job_id = :j AND attempts > 0 AND finished_at IS NULL"
            ),
            {"j": job_id},
        ).scalar()
    engine.dispose()
    return n > 0


def max_attempts(database_url: str, job_id: str) -> int:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT max(attempts) FROM job_chunks WHERE job_id = :j"), {"j": job_id}
        ).scalar()
    engine.dispose()
    return n


def test_celery_job_in_three_formats_then_from_cache(
    tiny_model,
    mock_sky,
    mock_skyserver,
    database_url,
    broker,
    tmp_path,
):
    values = settings(tiny_model, mock_skyserver, database_url, broker, tmp_path)
    text, rows = targets_csv(mock_sky, 200)
    with api_service(tiny_model, values, tmp_path, job_chunk_size=50) as api:
        ready = httpx.get(f"{api}{API}/readyz").json()
        assert ready["checks"]["broker"] == "ok", ready
        worker = Worker(tmp_path, env_of(values), "w1")
        try:
            before = mock_stats(mock_skyserver)["getjpeg"]
            job = submit(api, text).json()
            done = wait(api, job["id"], timeout=180)
            assert done["counts"] == {"queued": 0, "done": 200, "failed": 0, "invalid": 3}
            assert mock_stats(mock_skyserver)["getjpeg"] - before == 200
            got = results(api, job["id"])
            for name in ("json", "csv", "votable"):
                assert len(got[name]) == 203, name
            first = got["json"]
            assert [r["id"] for r in first] == [r["id"] for r in rows]
            # The worker's numbers are a clean offline run's on the same cutouts.
            some = [r for r in first if r["status"] == "done"][:20]
            cutouts = model_cutouts(
                tiny_model, mock_sky, [(r["galmet_ra"], r["galmet_dec"]) for r in some]
            )
            for r, expected in zip(some, offline_predictions(tiny_model, cutouts, 2), strict=True):
                assert r["cached"] is False
                # to the 4 decimals results carry
                assert r["oh_p50"] == pytest.approx(expected["oh_p50"], abs=5e-5), r["id"]

            # Resubmitted: from the cache, without SkyServer; row by row the first answers.
            before = mock_stats(mock_skyserver)["getjpeg"]
            again = wait(api, submit(api, text).json()["id"], timeout=120)
            assert again["counts"] == done["counts"]
            assert mock_stats(mock_skyserver)["getjpeg"] == before
            rerun = results(api, again["id"])["json"]
            assert [r["id"] for r in rerun] == [r["id"] for r in first]
            for old, new in zip(first, rerun, strict=True):
                assert new["status"] == old["status"], new["id"]
                if old["status"] != "done":
                    continue
                assert old["cached"] is False and new["cached"] is True, new["id"]
                for key in ("oh_p50", "oh_sigma", "log_mstar"):
                    assert new[key] == old[key], (new["id"], key)
            metrics = httpx.get(f"{api}/metrics").text
            assert "galmet_queue_depth 0.0" in metrics
        finally:
            worker.stop()
    log = worker.text()
    assert f'"job_id": "{job["id"]}"' in log and '"chunk": 3' in log, log[-2000:]


def test_a_killed_worker_loses_nothing(
    tiny_model, mock_sky, database_url, broker, tmp_path, caplog
):
    text, _ = targets_csv(mock_sky, 100, bad=False)
    with serve_in_thread(create_mock(mock_sky, Faults(latency=0.15))) as slow:
        values = settings(tiny_model, slow, database_url, broker, tmp_path)
        with api_service(tiny_model, values, tmp_path, job_chunk_size=10) as api:
            first = Worker(tmp_path, env_of(values), "first")
            job = submit(api, text).json()
            wait_for(lambda: counts(api, job["id"])["done"] >= 10, 120, "the first chunk")
            # Between two chunks the kill would lose only a message; wait for one in flight.
            wait_for(lambda: chunk_running(database_url, job["id"]), 60, "a chunk in flight")
            first.kill()  # SIGKILL, mid-chunk: its chunk in flight is never acknowledged
            left = counts(api, job["id"])["queued"]
            assert left > 0, "the job finished before the kill; make it slower"
            assert httpx.get(f"{api}{API}/healthz").status_code == 200
            second = Worker(tmp_path, env_of(values), "second")
            try:
                done = wait(api, job["id"], timeout=180)
                rows = results(api, job["id"])["json"]
            finally:
                second.stop()
    assert done["counts"] == {"queued": 0, "done": 100, "failed": 0, "invalid": 0}
    assert [r["row"] for r in rows] == list(range(1, 101))
    assert_one_clean_prediction_per_target(database_url, job["id"], rows, tiny_model, mock_sky)
    # The chunk the killed worker held was noticed and run again.
    assert "lost chunks again" in caplog.text
    assert max_attempts(database_url, job["id"]) >= 2


def test_a_redis_restart_mid_job_loses_nothing(
    tiny_model, mock_sky, database_url, tmp_path, caplog
):
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("redis-server is not installed: cannot run a private Redis to restart")
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", "--dir", str(tmp_path)]  # fmt: skip

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), 20, "redis")
        return proc

    redis_proc = start_redis()
    text, _ = targets_csv(mock_sky, 100, bad=False)
    try:
        with serve_in_thread(create_mock(mock_sky, Faults(latency=0.15))) as slow:
            values = settings(
                tiny_model, slow, database_url, f"redis://127.0.0.1:{port}/0", tmp_path
            )
            with api_service(tiny_model, values, tmp_path, job_chunk_size=10) as api:
                worker = Worker(tmp_path, env_of(values), "w")
                try:
                    job = submit(api, text).json()
                    wait_for(lambda: counts(api, job["id"])["done"] >= 10, 120, "a chunk")
                    # Redis goes away with every queued message (it keeps nothing on disk).
                    redis_proc.kill()
                    redis_proc.wait(10)
                    down = httpx.get(f"{api}{API}/readyz", timeout=30)
                    assert down.status_code == 503 and "error" in down.json()["checks"]["broker"]
                    assert httpx.get(f"{api}{API}/healthz").status_code == 200
                    redis_proc = start_redis()
                    done = wait(api, job["id"], timeout=180)
                    rows = results(api, job["id"])["json"]
                finally:
                    worker.stop()
    finally:
        redis_proc.kill()
        redis_proc.wait(10)
    assert done["counts"]["done"] == 100 and done["counts"]["queued"] == 0
    assert [r["row"] for r in rows] == list(range(1, 101))
    assert_one_clean_prediction_per_target(database_url, job["id"], rows, tiny_model, mock_sky)
    assert "lost chunks again" in caplog.text  # the queued messages died with Redis


def test_skyserver_failures_through_the_worker(
    tiny_model,
    mock_sky,
    database_url,
    broker,
    tmp_path,
):
    text, _ = targets_csv(mock_sky, 40, bad=False)
    faults = Faults(fail_rate=0.5, timeout_rate=0.1, hang_seconds=3, seed=5)
    with serve_in_thread(create_mock(mock_sky, faults)) as flaky:
        values = settings(tiny_model, flaky, database_url, broker, tmp_path)
        values["skyserver_timeout"] = "0.5"
        metrics_port = free_port()  # the worker's one pool process serves on base + 1
        values["worker_metrics_port"] = str(metrics_port - 1)
        with api_service(tiny_model, values, tmp_path, job_chunk_size=20) as api:
            worker = Worker(tmp_path, env_of(values), "w")
            try:
                done = wait(api, submit(api, text).json()["id"], timeout=180)
                rows = results(api, done["id"])["json"]
                scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            finally:
                worker.stop()
    # The worker process's own metrics: the images it ran and the targets it answered.
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in scraped.splitlines()
        if line.startswith("galmet_") and " " in line
    }
    assert samples["galmet_images_total"] == done["counts"]["done"]
    assert samples['galmet_job_targets_total{outcome="failed"}'] == done["counts"]["failed"]
    c = done["counts"]
    assert c["failed"] > 0 and c["done"] > 0 and c["done"] + c["failed"] == 40
    reasons = {r["reason"].split(":")[0] for r in rows if r["status"] == "failed"}
    assert reasons <= {"502", "504"} and "502" in reasons
