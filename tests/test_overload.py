"""Graceful overload: past GALMET_MAX_QUEUE images waiting for the model, a new single
prediction is a 503 with Retry-After at once; cached answers and batch work go on."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from galmet.engine import EngineBusy, InferenceEngine
from galmet.predictor import Predictor
from tests.helpers import galaxy, service

API = "/api/v1"
SLOW = 1.0  # seconds per forward pass once slowed


@pytest.fixture
def slow_model(monkeypatch):
    """Every forward pass takes SLOW seconds more, holding its thread as a real one would."""
    original = Predictor.predict_images

    def slow(self, batch, tta=1, batch_size=256):
        time.sleep(SLOW)
        return original(self, batch, tta, batch_size)

    monkeypatch.setattr(Predictor, "predict_images", slow)


def test_engine_sheds_past_its_bound_and_queues_the_rest(tiny_model, slow_model):
    predictor = Predictor.from_file(tiny_model, "cpu")
    image = np.zeros((predictor.input_size,) * 2 + (3,), np.uint8)

    async def main():
        async with InferenceEngine(predictor, batch_size=1, batch_wait_ms=0, max_queue=2) as e:
            running = asyncio.create_task(e.predict([image], 1, shed=True))
            await asyncio.sleep(0.2)  # in its forward pass: waits no longer
            waiting = [asyncio.create_task(e.predict([image], 1, shed=True)) for _ in range(2)]
            await asyncio.sleep(0.05)
            assert e.waiting == 2
            with pytest.raises(EngineBusy) as busy:
                await e.predict([image], 1, shed=True)
            # Work that must not be lost (a job's chunk) still queues past the bound.
            job = asyncio.create_task(e.predict([image, image], 1))
            results = await asyncio.gather(running, *waiting, job)
            # Once the queue has drained, single predictions are taken again.
            again = await e.predict([image], 1, shed=True)
            return busy.value, results, again

    busy, results, again = asyncio.run(main())
    assert busy.retry_after >= 1 and "overloaded" in str(busy)
    assert [len(r) for r in results] == [1, 1, 1, 2] and len(again) == 1


def test_service_answers_503_with_retry_after_and_cached_answers_flow(
    tiny_model, mock_skyserver, mock_sky, tmp_path, monkeypatch
):
    cutouts = [mock_sky.cutout_jpeg(*galaxy(mock_sky, i), 0.396, 64, 64) for i in range(10, 18)]
    url = f"sqlite:///{tmp_path}/overload.sqlite3"
    with service(tiny_model, mock_skyserver, url, tmp_path, max_queue=1, batch_size=1) as api:
        ra, dec = galaxy(mock_sky, 3)
        assert httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
        cached_upload = cutouts.pop()
        assert upload(api, cached_upload).status_code == 200

        original = Predictor.predict_images

        def slow(self, batch, tta=1, batch_size=256):
            time.sleep(SLOW)
            return original(self, batch, tta, batch_size)

        monkeypatch.setattr(Predictor, "predict_images", slow)

        async def main():
            async with httpx.AsyncClient(base_url=f"{api}{API}", timeout=60) as client:
                new = [
                    asyncio.create_task(
                        client.post("/predict/image", files={"file": ("g.jpg", data)})
                    )
                    for data in cutouts
                ]
                await asyncio.sleep(0.5)  # the first is in its slow forward pass
                by_position = await client.get("/predict", params={"ra": ra, "dec": dec})
                by_hash = await client.post(
                    "/predict/image", files={"file": ("c.jpg", cached_upload)}
                )
                still_busy = sum(not t.done() for t in new)
                return by_position, by_hash, still_busy, await asyncio.gather(*new)

        by_position, by_hash, still_busy, answers = asyncio.run(main())

    # Cached answers came while uncached ones were still waiting for the model.
    assert still_busy >= 1
    assert by_position.status_code == 200 and by_position.json()["cached"] is True
    assert by_hash.status_code == 200 and by_hash.json()["cached"] is True
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2  # one in the forward pass, one waiting: the bound
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["flags"] == ["overloaded"] and "try again" in r.json()["detail"]


def upload(api: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{api}{API}/predict/image", files={"file": ("x.jpg", data)}, timeout=60)
