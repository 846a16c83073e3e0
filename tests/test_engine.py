"""The inference engine: same numbers as the Predictor, micro-batching, errors, fairness."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from galmet.engine import EngineClosed, InferenceEngine
from galmet.model import Checkpoint, GalmetNet
from galmet.predictor import TTA_CPU, TTA_GPU, Predictor, default_tta

SIZE = 32


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """An untrained two-output network with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = GalmetNet(2)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, SIZE, SIZE))
    ck = Checkpoint(
        outputs=["oh_p50", "lgm_tot_p50"],
        target_mean=[9.0, 10.0],
        target_std=[0.1, 0.5],
        input_size=SIZE,
        bands="gri",
        model_states=[net.state_dict()],
        sigma_scale={1: 1.2, 8: 0.9},
    )
    return Predictor(ck, "cpu")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(32)]


def expected(predictor: Predictor, images: list[np.ndarray], tta: int) -> list[dict]:
    pred = predictor.predict_images(torch.from_numpy(np.stack(images)), tta)
    return [
        {
            key: dict(zip(pred.outputs, values[i].tolist(), strict=True))
            for key, values in (("outputs", pred.mean), ("sigma", pred.sigma),
                                ("tta_spread", pred.spread))
        }
        for i in range(len(images))
    ]  # fmt: skip


def assert_records_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == {"outputs", "sigma", "tta_spread", "ood_score", "out_of_distribution"}
        for key in ("outputs", "sigma", "tta_spread"):
            assert g[key].keys() == w[key].keys()
            for name in g[key]:
                assert g[key][name] == pytest.approx(w[key][name], abs=1e-5)
        # the test's tiny checkpoint has no feature statistics: no score, never the flag
        assert g["ood_score"] is None and g["out_of_distribution"] is False


def test_predict_arrays_matches_predictor(predictor, images):
    got = predictor.predict_arrays(images[:5], 8)
    assert_records_close(got, expected(predictor, images[:5], 8))
    assert predictor.predict_arrays([], 1) == []
    with pytest.raises(ValueError, match="shape"):
        predictor.predict_arrays([np.zeros((SIZE + 1, SIZE, 3), np.uint8)], 1)
    with pytest.raises(ValueError, match="TTA"):
        predictor.predict_arrays(images[:1], 3)


def test_default_tta():
    assert default_tta("cpu") == TTA_CPU
    assert default_tta(torch.device("cuda")) == TTA_GPU == 8
    assert default_tta("cpu", 4) == 4
    assert default_tta("cuda", 1) == 1


def test_concurrent_calls_are_batched(predictor, images):
    async def main():
        async with InferenceEngine(predictor, batch_size=16, batch_wait_ms=20) as engine:
            results = await asyncio.gather(*(engine.predict([im], 2) for im in images))
            return results, engine.stats

    results, stats = asyncio.run(main())
    assert_records_close([r[0] for r in results], expected(predictor, images, 2))
    assert stats.requests == 32 and stats.images == 32
    assert stats.batches < 32  # micro-batching happened: fewer forward passes than calls
    assert stats.batches <= 4 and max(stats.batch_sizes) == 16
    assert stats.mean_batch_size >= 8
    assert stats.as_dict()["batch_sizes"] == dict(stats.batch_sizes)


def test_wait_collects_late_arrivals(predictor, images):
    async def main():
        async with InferenceEngine(predictor, batch_size=64, batch_wait_ms=200) as engine:

            async def late(i):
                await asyncio.sleep(0.01 * i)
                return await engine.predict([images[i]], 1)

            await asyncio.gather(*(late(i) for i in range(5)))
            return engine.stats

    stats = asyncio.run(main())
    assert stats.batches == 1 and stats.batch_sizes == {5: 1}


def test_mixed_tta_batched_separately(predictor, images):
    levels = [1, 8, 2, 8, 1, 4, 1, 8]

    async def main():
        async with InferenceEngine(predictor, batch_size=16, batch_wait_ms=20) as engine:
            results = await asyncio.gather(
                *(engine.predict(images[2 * i : 2 * i + 2], t) for i, t in enumerate(levels))
            )
            return results, engine.stats

    results, stats = asyncio.run(main())
    for i, tta in enumerate(levels):
        assert_records_close(results[i], expected(predictor, images[2 * i : 2 * i + 2], tta))
    assert stats.batches == len(set(levels))  # one batch per TTA level


def test_large_request_spans_batches(predictor, images):
    async def main():
        async with InferenceEngine(predictor, batch_size=8, batch_wait_ms=1) as engine:
            return await engine.predict(images[:20], 1), engine.stats

    got, stats = asyncio.run(main())
    assert_records_close(got, expected(predictor, images[:20], 1))
    assert sorted(stats.recent_batch_sizes) == [4, 8, 8]


def test_error_reaches_its_batch_only_and_engine_recovers(predictor, images, monkeypatch):
    original = predictor.predict_images
    calls = {"n": 0}

    def flaky(batch, tta=1, batch_size=256):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(batch, tta, batch_size)

    monkeypatch.setattr(predictor, "predict_images", flaky)

    async def main():
        async with InferenceEngine(predictor, batch_size=4, batch_wait_ms=20) as engine:
            # Two batches of four: the first fails, the second is served.
            first = await asyncio.gather(
                *(engine.predict([im], 1) for im in images[:8]), return_exceptions=True
            )
            after = await engine.predict(images[:2], 1)
            return first, after, engine.stats

    first, after, stats = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "simulated" in str(r) for r in first[:4])
    assert all(isinstance(r, list) for r in first[4:])
    assert_records_close(after, expected(predictor, images[:2], 1))
    assert stats.failed_batches == 1 and stats.batches == 2


def test_bad_input_fails_only_its_caller(predictor, images):
    async def main():
        async with InferenceEngine(predictor, batch_size=16, batch_wait_ms=20) as engine:
            return await asyncio.gather(
                engine.predict(images[:1], 1),
                engine.predict([np.zeros((64, 64, 3), np.uint8)], 1),
                engine.predict(images[:1], 5),
                engine.predict(images[1:2], 1),
                return_exceptions=True,
            )

    ok1, bad_shape, bad_tta, ok2 = asyncio.run(main())
    assert isinstance(bad_shape, ValueError) and isinstance(bad_tta, ValueError)
    assert isinstance(ok1, list) and isinstance(ok2, list)


def test_event_loop_stays_responsive(predictor, images, monkeypatch):
    original = predictor.predict_images

    def slow(batch, tta=1, batch_size=256):
        time.sleep(0.3)  # a long forward pass, holding its thread as a real one would
        return original(batch, tta, batch_size)

    monkeypatch.setattr(predictor, "predict_images", slow)

    async def main():
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        async with InferenceEngine(predictor, batch_size=4, batch_wait_ms=1) as engine:
            await engine.predict(images[:4], 1)
        task.cancel()
        return np.diff(ticks)

    gaps = asyncio.run(main())
    assert len(gaps) >= 10  # ticked all through the 0.3 s batch
    assert gaps.max() < 0.2


def test_close_fails_waiting_and_refuses_new(predictor, images):
    async def main():
        engine = InferenceEngine(predictor, batch_size=64, batch_wait_ms=10_000)
        waiting = asyncio.create_task(engine.predict(images[:1], 1))
        await asyncio.sleep(0.05)  # queued, waiting for a fuller batch
        await engine.aclose()
        with pytest.raises(EngineClosed):
            await waiting
        with pytest.raises(EngineClosed):
            await engine.predict(images[:1], 1)

    asyncio.run(main())


def test_from_checkpoint(predictor, images, tmp_path):
    path = tmp_path / "m.pt"
    predictor.checkpoint.save(path)
    engine = InferenceEngine.from_checkpoint(path, "cpu", batch_size=8)
    assert engine.batch_size == 8

    async def main():
        async with engine:
            return await engine.predict(images[:3])  # the engine's default TTA

    got = asyncio.run(main())
    assert_records_close(got, expected(predictor, images[:3], engine.tta))


def test_cancelled_caller_is_skipped(predictor, images):
    async def main():
        async with InferenceEngine(predictor, batch_size=16, batch_wait_ms=50) as engine:
            gone = asyncio.create_task(engine.predict(images[:3], 1))
            kept = asyncio.create_task(engine.predict(images[3:4], 1))
            await asyncio.sleep(0.01)  # both queued, the batch not yet run
            gone.cancel()
            got = await kept
            return got, engine.stats

    got, stats = asyncio.run(main())
    assert_records_close(got, expected(predictor, images[3:4], 1))
    assert stats.images == 1  # the cancelled request's images were never computed
