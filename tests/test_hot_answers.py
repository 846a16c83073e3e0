"""Hot answers (galmet.app.hot): a cached answer kept encoded in memory is the same answer,
byte for byte, as the one read from the database; and request latency still reaches
/metrics by route template through the ASGI timing middleware."""

from __future__ import annotations

import httpx
import pytest

from galmet.app.hot import HotAnswers
from galmet.app.predictions import sky_answer_key
from tests.helpers import galaxy, service

API = "/api/v1"


@pytest.fixture
def api(tiny_model, mock_skyserver, tmp_path):
    with service(tiny_model, mock_skyserver, f"sqlite:///{tmp_path}/db.sqlite3", tmp_path) as url:
        yield url


def test_memory_answers_are_the_database_answers_byte_for_byte(api, mock_sky):
    ra, dec = galaxy(mock_sky, 5)
    get = lambda: httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)  # noqa: E731
    first = get()
    assert first.status_code == 200 and first.json()["cached"] is False
    from_db, from_memory = get(), get()
    assert from_db.json()["cached"] is True
    assert from_memory.content == from_db.content
    assert from_memory.headers["content-type"] == from_db.headers["content-type"]
    posted = httpx.post(f"{api}{API}/predict", json={"ra": ra, "dec": dec})
    assert posted.content == from_db.content
    # Another spelling of the same position asks the same question: the same answer.
    spelled = httpx.get(f"{api}{API}/predict", params={"ra": f"{ra}", "dec": f"{dec:+}"})
    assert spelled.json() == from_db.json()
    # A position 0.1" away is a cache hit too, but echoes the position it asked for.
    near = httpx.get(f"{api}{API}/predict", params={"ra": ra + 0.1 / 3600, "dec": dec}).json()
    assert near["cached"] is True and near["ra"] == pytest.approx(ra + 0.1 / 3600, abs=1e-12)
    assert near["oh_p50"] == from_db.json()["oh_p50"]


def test_uploads_from_memory_are_the_database_answers(api, mock_sky):
    data = mock_sky.cutout_jpeg(*galaxy(mock_sky, 7), 0.396, 64, 64)
    send = lambda body: httpx.post(  # noqa: E731
        f"{api}{API}/predict/image", files={"file": ("c.jpg", body, "image/jpeg")}, timeout=60
    )
    assert send(data).json()["cached"] is False
    from_db, from_memory = send(data), send(data)
    assert from_db.json()["cached"] is True and from_memory.content == from_db.content
    # A different file is not mistaken for it; a broken one is still refused.
    other = mock_sky.cutout_jpeg(*galaxy(mock_sky, 8), 0.396, 64, 64)
    assert send(other).json()["cached"] is False
    assert send(data[:100]).status_code == 422


def request_count(api: str, route: str, status: int) -> float:
    """The /metrics count of GET requests to ``route`` answered ``status`` (process-wide)."""
    series = "galmet_http_request_duration_seconds_count"
    prefix = f'{series}{{method="GET",route="{route}",status="{status}"}} '
    for line in httpx.get(f"{api}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_request_latency_is_recorded_by_route_template(api, mock_sky):
    ra, dec = galaxy(mock_sky, 5)
    job = f"{API}/jobs/00000000-0000-0000-0000-000000000000"
    predicted = request_count(api, f"{API}/predict", 200)
    missing = request_count(api, f"{API}/jobs/{{job_id}}", 404)
    for _ in range(3):  # computed, from the database, from memory: all timed
        httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
    assert httpx.get(f"{api}{job}").status_code == 404
    assert request_count(api, f"{API}/predict", 200) == predicted + 3
    assert request_count(api, f"{API}/jobs/{{job_id}}", 404) == missing + 1


def test_hot_answers_are_bounded_least_recently_used_first():
    hot = HotAnswers(2)
    hot.put("a", b"1")
    hot.put("b", b"2")
    assert hot.get("a") == b"1"  # now b is the least recently used
    hot.put("c", b"3")
    assert (hot.get("a"), hot.get("b"), hot.get("c")) == (b"1", None, b"3") and len(hot) == 2
    off = HotAnswers(0)
    off.put("a", b"1")
    assert off.get("a") is None and len(off) == 0


def test_hot_answer_keys_tell_what_the_answer_echoes_apart():
    key = sky_answer_key(150.0, 0.0, "v1", 2)
    assert sky_answer_key(150.0, 0.0, "v1", 2) == key
    assert sky_answer_key(150.0, -0.0, "v1", 2) != key  # echoed as "-0.0"
    assert sky_answer_key(150.0, 0.0, "v2", 2) != key  # another model
    assert sky_answer_key(150.0, 0.0, "v1", 4) != key  # another TTA level
