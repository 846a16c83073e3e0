"""Fault injection for the mock SkyServer, and its request counters.

Faults apply to the two SkyServer endpoints only and are deterministic: whether a request is
hit depends on the seed, the request URL and how many times that URL was requested before (so
a retry draws again, whatever the concurrency).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from galmet.errors import GalmetError


@dataclass(frozen=True)
class Faults:
    """What can go wrong, as fractions of requests to the SkyServer endpoints.

    ``fail_rate``: answered HTTP 500 with an HTML error page. ``latency``: seconds added
    to every answer. ``truncate_rate``: JPEG answers cut to half their length (with a
    matching Content-Length). ``timeout_rate``: requests that hang ``hang_seconds`` before
    answering, far longer than a sane client timeout. ``seed`` makes the draws repeatable.
    ``only`` limits the faults to one endpoint (``getjpeg`` or ``sqlsearch``): e.g. SQL down
    while the cutouts are served.
    """

    fail_rate: float = 0.0
    latency: float = 0.0
    truncate_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    seed: int = 0
    only: str | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate", "truncate_rate", "timeout_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise GalmetError(f"{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.latency < 0 or self.hang_seconds < 0:
            raise GalmetError("latency and hang time must not be negative")
        if self.only not in (None, "getjpeg", "sqlsearch"):
            raise GalmetError(f"faults apply to getjpeg or sqlsearch, not {self.only!r}")


_INJECTED_500 = (
    "<html><head><title>500 Internal Server Error</title></head><body>"
    "<h1>Internal Server Error</h1><p>mock-skyserver: injected failure</p></body></html>\n"
)


class MockState:
    """Counters and fault draws shared by the handlers (all run on the event loop)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.reset()

    def reset(self) -> None:
        """Zero the request, fault and attempt counters."""
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()

    def draw(self, kind: str, key: str, attempt: int) -> float:
        """A uniform number in [0, 1) fixed by (seed, kind, request URL, attempt)."""
        text = f"{self.faults.seed}|{kind}|{key}|{attempt}".encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    async def inject(self, request: Request, endpoint: str) -> tuple[Response | None, bool]:
        """Count the request and apply latency/hang/failure. Returns an early answer (or
        None) and whether this answer is to be truncated."""
        faults = self.faults
        self.requests[endpoint] += 1
        key = str(request.url.path) + "?" + str(request.url.query)
        attempt = self.attempts[key]
        self.attempts[key] += 1
        if faults.only not in (None, endpoint):
            return None, False
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if faults.timeout_rate and self.draw("timeout", key, attempt) < faults.timeout_rate:
            self.injected["timeout"] += 1
            await asyncio.sleep(faults.hang_seconds)
        if faults.fail_rate and self.draw("fail", key, attempt) < faults.fail_rate:
            self.injected["fail"] += 1
            return Response(_INJECTED_500, status_code=500, media_type="text/html"), False
        truncate = bool(faults.truncate_rate) and (
            self.draw("truncate", key, attempt) < faults.truncate_rate
        )
        return None, truncate

    def stats(self) -> dict[str, Any]:
        """Request counts per endpoint and counts of injected faults (``/mock/stats``)."""
        return {
            "getjpeg": self.requests["getjpeg"],
            "sqlsearch": self.requests["sqlsearch"],
            "total": sum(self.requests.values()),
            "injected": {k: self.injected[k] for k in ("fail", "timeout", "truncate")},
        }
