"""The inference engine: the one object that owns the model in a service process.

One inference engine, two ways to feed it:

- ``Predictor.predict_arrays(images, tta)`` is the plain synchronous step, decoded images
  in, prediction records out.
- ``InferenceEngine`` feeds it from asyncio: concurrent callers' images are gathered into
  micro-batches (up to ``batch_size`` images, or whatever arrived within ``batch_wait_ms``
  of the oldest waiting one, one TTA level per batch) and each batch runs in a single
  worker thread, so the model is used by one thread at a time and the event loop never
  waits on it.

Images reach both already decoded by ``galmet.images.decode_image(data,
predictor.input_size)``, the preprocessing of training. A record is
``{"outputs": {name: value}, "sigma": {name: value}, "tta_spread": {name: value},
"ood_score": float | None, "out_of_distribution": bool}``, values in physical units (dex),
keyed by the checkpoint's output names (``oh_p50``, ``lgm_tot_p50``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from galmet.d4 import check_tta
from galmet.predictor import Predictor, check_images, default_tta

log = logging.getLogger(__name__)


class EngineClosed(RuntimeError):
    """The engine was closed before (or while) the request could run."""


class EngineBusy(RuntimeError):
    """More images wait for the model than the engine's bound: try again in ``retry_after``
    seconds (the time the waiting work is expected to take)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Request:
    """One ``predict`` call: its future and its records as batches fill them in."""

    future: asyncio.Future
    results: list[dict | None]
    remaining: int


@dataclass
class _Item:
    request: _Request
    index: int
    image: np.ndarray
    arrived: float  # loop time


@dataclass
class EngineStats:
    """Counters for metrics and tests: what the engine has run so far."""

    requests: int = 0
    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    busy_seconds: float = 0.0  # time spent in forward passes
    batch_sizes: Counter = field(default_factory=Counter)  # images per batch -> batches
    recent_batch_sizes: deque = field(default_factory=lambda: deque(maxlen=100))

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "images": self.images,
            "failed_batches": self.failed_batches,
            "busy_seconds": self.busy_seconds,
            "mean_batch_size": self.mean_batch_size,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }


class InferenceEngine:
    """Owns a ``Predictor``; ``await predict(images, tta)`` from any number of coroutines.

    Use as ``async with InferenceEngine(predictor) as engine: …``, or ``await start()`` /
    ``await aclose()`` (e.g. in FastAPI's lifespan); ``predict`` starts it if needed.
    """

    def __init__(
        self,
        predictor: Predictor,
        batch_size: int = 64,
        batch_wait_ms: float = 5.0,
        tta: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        max_queue: int | None = None,
    ) -> None:
        """``on_batch(images, seconds)`` is called after each batch (the service's metrics).
        ``max_queue`` bounds the images waiting for the model that a ``predict(...,
        shed=True)`` may join (None: no bound); beyond it such a call raises ``EngineBusy``."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_queue is not None and max_queue < 0:
            raise ValueError("max_queue must not be negative")
        if batch_wait_ms < 0:
            raise ValueError("batch_wait_ms must not be negative")
        self.predictor = predictor
        self.batch_size = batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.tta = default_tta(predictor.device, tta)  # when predict is given none
        self.max_queue = max_queue
        self._on_batch = on_batch
        self.stats = EngineStats()
        # One thread: the model is never used by two threads at once.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="galmet-inference")
        self._queues: dict[int, deque[_Item]] = {}  # per TTA level, oldest first
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", **kwargs
    ) -> InferenceEngine:
        """An engine for the checkpoint file at ``path`` on ``device`` (``auto`` allowed)."""
        from galmet.device import pick_device

        if str(device) in ("auto", "cpu", "cuda"):
            device = pick_device(str(device))
        return cls(Predictor.from_file(Path(path), device), **kwargs)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching task (on the running event loop)."""
        if self._closed:
            raise EngineClosed("the inference engine is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="galmet-inference-batcher"
            )

    async def aclose(self) -> None:
        """Finish the batch in progress, fail the requests still waiting, free the thread."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            # A crash was logged, and given to its callers, when it happened.
            with contextlib.suppress(Exception):
                await self._task
        self._fail_waiting(EngineClosed("the inference engine closed before this request ran"))
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ requests
    @property
    def waiting(self) -> int:
        """Images queued for the model, not yet in a batch."""
        return sum(len(queue) for queue in self._queues.values())

    def retry_after(self) -> float:
        """Seconds the waiting images are expected to take (from the forward passes so far)."""
        per_image = self.stats.busy_seconds / self.stats.images if self.stats.images else 0.0
        return max(1.0, self.waiting * per_image)

    async def predict(
        self, images: list[np.ndarray], tta: int | None = None, shed: bool = False
    ) -> list[dict]:
        """One record per image (decoded RGB uint8, the model's input size), in order.

        Raises ``ValueError`` at once for bad input (so it never fails anyone else's batch),
        and whatever the forward pass raised for the batch this request was part of. With
        ``shed`` (a request someone waits on, that can be asked again), raises ``EngineBusy``
        at once rather than queue past ``max_queue`` waiting images: a bounded wait, not an
        ever-growing queue of timeouts.
        """
        tta = check_tta(self.tta if tta is None else tta)
        check_images(images, self.predictor.input_size)
        if not images:
            return []
        if shed and self.max_queue is not None and self.waiting + len(images) > self.max_queue:
            raise EngineBusy(
                f"overloaded: {self.waiting} images wait for the model (the bound is "
                f"{self.max_queue}); try again later",
                self.retry_after(),
            )
        await self.start()
        loop = asyncio.get_running_loop()
        request = _Request(loop.create_future(), [None] * len(images), len(images))
        now = loop.time()
        queue = self._queues.setdefault(tta, deque())
        queue.extend(_Item(request, i, image, now) for i, image in enumerate(images))
        self.stats.requests += 1
        self._wakeup.set()
        return await request.future

    # ------------------------------------------------------------------ batching
    def _oldest_tta(self) -> int | None:
        """The TTA level whose oldest waiting image has waited longest."""
        for queue in self._queues.values():
            # Requests cancelled or already failed need no work.
            while queue and queue[0].request.future.done():
                queue.popleft()
        waiting = [(q[0].arrived, tta) for tta, q in self._queues.items() if q]
        return min(waiting)[1] if waiting else None

    async def _run(self) -> None:
        # Whatever stops this task, no caller may be left waiting forever.
        try:
            await self._batches()
        except asyncio.CancelledError:
            self._closed = True
            self._fail_waiting(EngineClosed("the inference engine was stopped"))
            raise
        except Exception as exc:
            log.exception("inference batching stopped")
            self._closed = True
            self._fail_waiting(EngineClosed(f"the inference engine stopped: {exc!r}"))
            raise

    def _fail_waiting(self, error: Exception) -> None:
        for queue in self._queues.values():
            _fail(list(queue), error)
        self._queues.clear()

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            tta = self._oldest_tta()
            if tta is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self._queues[tta]
            # Wait for a full batch, but never past batch_wait after the oldest arrived.
            deadline = queue[0].arrived + self.batch_wait
            while len(queue) < self.batch_size and not self._closed:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            if self._closed:
                break
            batch: list[_Item] = []
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if not item.request.future.done():
                    batch.append(item)
            if batch:
                await self._run_batch(batch, tta)

    async def _run_batch(self, batch: list[_Item], tta: int) -> None:
        loop = asyncio.get_running_loop()
        images = [item.image for item in batch]
        started = time.perf_counter()
        try:
            records = await loop.run_in_executor(
                self._executor, self.predictor.predict_arrays, images, tta
            )
        except Exception as exc:
            self.stats.failed_batches += 1
            _fail(batch, exc)
            return
        except asyncio.CancelledError:
            _fail(batch, EngineClosed("the inference engine was stopped during this batch"))
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.stats.busy_seconds += elapsed
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed)
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        self.stats.recent_batch_sizes.append(len(batch))
        for item, record in zip(batch, records, strict=True):
            request = item.request
            if request.future.done():
                continue
            request.results[item.index] = record
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.results)


def _fail(batch: list[_Item], error: BaseException) -> None:
    for item in batch:
        if not item.request.future.done():
            item.request.future.set_exception(error)
