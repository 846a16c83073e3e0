"""The one SDSS SkyServer client: image cutouts (``getjpeg``) and SQL search (``SqlSearch``).

Used by ``galmet download`` and ``galmet catalog``, and by the service and the worker, so it
imports nothing from FastAPI. One pooled ``httpx.AsyncClient`` per ``SkyServerClient``;
create it, use it and close it within one event loop::

    async with SkyServerClient(url, concurrency=8, rate=10) as sky:
        jpeg = await sky.cutout(150.1, 2.2)
        table = await sky.sql("SELECT TOP 10 objID, ra, dec FROM Galaxy")

Politeness: at most ``concurrency`` requests in flight and request starts spaced at least
``1 / rate`` seconds apart, shared by every task using the client. Failures that may pass
(HTTP 5xx and 429, timeouts, connection errors, truncated or undecodable JPEGs) are retried
``retries`` times with exponential backoff and jitter; other 4xx answers are not.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import time
from collections.abc import Callable
from typing import Self

import httpx
import numpy as np
from astropy.table import Table
from PIL import Image

from galmet import __version__
from galmet.errors import GalmetError

#: The real SDSS DR17 SkyServer; the release is part of the base URL.
DEFAULT_SKYSERVER_URL = "https://skyserver.sdss.org/dr17"

#: Pixel scale (arcsec/px) and size of the cutouts the model is trained on.
DEFAULT_SCALE = 0.296
DEFAULT_SIZE = 128

#: Defaults of the client. 8 in flight and 10 requests/s fetch the ~142k-galaxy sample in
#: about 4 hours, against a day for the public reference downloader (1 request + 0.5 s sleep).
DEFAULT_CONCURRENCY = 8
DEFAULT_RATE = 10.0
DEFAULT_RETRIES = 4
DEFAULT_TIMEOUT = 30.0
#: SQL searches run server-side for minutes; SkyServer has its own time limit.
DEFAULT_SQL_TIMEOUT = 600.0

#: getjpeg only serves sizes in this range (pixels).
MIN_SIZE, MAX_SIZE = 64, 2048

#: Blank-cutout test: blank when the 99.9th percentile of the brightest channel (0-255) is
#: below 10, i.e. fewer than 0.1 % of the pixels (16 of 128 x 128) reach 10. Off-footprint
#: getjpeg answers are black (0 after JPEG coding); on the mock sky, empty in-footprint sky
#: already gives 34-35 from noise alone and the faintest, lowest-surface-brightness sample
#: galaxies 78 or more. A percentile rather than the maximum lets a few stray bright pixels
#: pass; a PSF-sized blob of peak 40 on pure black still counts as data.
BLANK_LEVEL = 10
BLANK_PERCENTILE = 99.9


class SkyServerError(GalmetError):
    """SkyServer could not give what was asked. ``reason`` is short, for tables and logs."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class SkyServerUpstreamError(SkyServerError):
    """SkyServer answered with an error or with garbage, or could not be reached (HTTP 502)."""


class SkyServerTimeout(SkyServerError):
    """SkyServer did not answer in time (HTTP 504)."""


class _Retryable(Exception):
    """Internal: wraps an error worth another attempt."""

    def __init__(self, error: SkyServerError) -> None:
        self.error = error


def one_line(text: str, limit: int = 200) -> str:
    """Condense a server message (text or HTML) to one short line."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def server_message(text: str) -> str:
    """The one-line message of a SkyServer error body: the ``ErrorMessage`` of its JSON
    errors, else the text (or HTML) condensed."""
    if text.lstrip().startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("ErrorMessage"):
            return one_line(str(body["ErrorMessage"]))
    return one_line(text)


def parse_sql_csv(text: str) -> Table:
    """Parse a ``SqlSearch ... format=csv`` body: a ``#Table1`` line, a header, the rows.

    Anything else (an error report in JSON, text or HTML) raises ``SkyServerUpstreamError``
    carrying the server's message on one line.
    """
    text = text.lstrip("\ufeff")
    first, _, rest = text.partition("\n")
    if first.strip() != "#Table1":
        message = server_message(text) or "empty answer"
        raise SkyServerUpstreamError(f"SkyServer SQL search failed: {message}", "SQL error")
    if not rest.strip():
        return Table()
    try:
        return Table.read(rest, format="ascii.csv")
    except Exception as exc:  # astropy raises several types for malformed CSV
        raise SkyServerUpstreamError(
            f"SkyServer SQL search returned unreadable CSV: {one_line(str(exc))}", "bad CSV"
        ) from exc


def decode_jpeg(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Fully decode a JPEG into an RGB uint8 array (height, width, 3).

    Raises ``ValueError`` for bytes that are not a complete JPEG (a truncated body
    included) or, when ``size`` (width, height) is given, one of another size.
    """
    # Pillow fails on a cut-short file too, unless something in the process has set
    # ImageFile.LOAD_TRUNCATED_IMAGES; the end-of-image marker check does not depend on that.
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    if not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise ValueError("truncated JPEG")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise ValueError("not a JPEG")
            if size is not None and im.size != tuple(size):
                raise ValueError(f"JPEG is {im.size[0]}x{im.size[1]}, not {size[0]}x{size[1]}")
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable JPEG ({one_line(str(exc), 80)})") from exc


def is_valid_jpeg(data: bytes, size: tuple[int, int] | None = None) -> bool:
    """Whether ``data`` is a complete, decodable JPEG (of ``size``, when given)."""
    try:
        decode_jpeg(data, size)
    except ValueError:
        return False
    return True


def is_blank_cutout(image: bytes | np.ndarray) -> bool:
    """Whether a cutout is SkyServer's empty (near-black) off-footprint image.

    True when the ``BLANK_PERCENTILE`` of the brightest channel stays below ``BLANK_LEVEL``
    (see there for the evidence): sky noise alone lifts it well above, galaxy or not.
    """
    pixels = decode_jpeg(image) if isinstance(image, bytes | bytearray) else np.asarray(image)
    if pixels.ndim == 3:
        pixels = pixels.max(axis=-1)
    return bool(np.percentile(pixels, BLANK_PERCENTILE) < BLANK_LEVEL)


class _RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart across all tasks."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        # No await between reading and booking the slot, so tasks cannot take the same one.
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class SkyServerClient:
    """Async SkyServer client with pooling, a concurrency limit, a rate limit and retries.

    ``base_url`` includes the data release, e.g. ``https://skyserver.sdss.org/dr17``.
    ``rate`` is in requests per second (``None`` or 0: unlimited). ``retries`` counts the
    attempts after the first; ``backoff`` is the first retry delay in seconds, doubled on
    each retry. ``transport`` lets tests plug in an ``httpx.MockTransport``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SKYSERVER_URL,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        rate: float | None = DEFAULT_RATE,
        retries: int = DEFAULT_RETRIES,
        timeout: float = DEFAULT_TIMEOUT,
        sql_timeout: float = DEFAULT_SQL_TIMEOUT,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self.sql_timeout = sql_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: Requests sent so far, retries included.
        self.requests_sent = 0
        self._semaphore = asyncio.Semaphore(concurrency)
        self._rate = _RateLimiter(rate)
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"User-Agent": f"galmet/{__version__} (SDSS cutout fetcher)"},
            follow_redirects=True,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def cutout(
        self,
        ra: float,
        dec: float,
        *,
        scale: float = DEFAULT_SCALE,
        width: int = DEFAULT_SIZE,
        height: int = DEFAULT_SIZE,
    ) -> bytes:
        """The ``getjpeg`` cutout centred on (ra, dec) in degrees, as complete JPEG bytes.

        Off the imaging footprint SkyServer still answers with a (near-black) JPEG: check
        the result with ``is_blank_cutout``.
        """
        if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
            raise ValueError(f"coordinates out of range: ra={ra}, dec={dec}")
        if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
            raise ValueError(f"cutout size must be {MIN_SIZE}..{MAX_SIZE} px")
        if not scale > 0:
            raise ValueError("scale must be positive")

        def check(response: httpx.Response) -> None:
            try:
                decode_jpeg(response.content, (width, height))
            except ValueError as exc:
                raise _Retryable(SkyServerUpstreamError(f"bad cutout: {exc}", str(exc))) from exc

        params = {"ra": ra, "dec": dec, "scale": scale, "width": width, "height": height}
        response = await self._get(
            "SkyServerWS/ImgCutout/getjpeg", params, what=f"cutout at {ra} {dec}", check=check
        )
        return response.content

    async def sql(self, query: str) -> Table:
        """Run a SQL query (T-SQL dialect, at most 500,000 rows) and return the rows.

        A query SkyServer rejects (an HTTP error with its JSON ``ErrorMessage``) is not
        retried: the same query would fail again.
        """
        params = {"cmd": query, "format": "csv"}
        response = await self._get(
            "SkyServerWS/SearchTools/SqlSearch",
            params,
            what="SQL search",
            timeout=self.sql_timeout,
            retry_reported=False,
        )
        return parse_sql_csv(response.text)

    def _delay(self, retry: int) -> float:
        # Exponential backoff with "equal jitter", so that parallel tasks do not retry in step.
        delay = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return delay * random.uniform(0.5, 1.0)

    async def _get(
        self,
        path: str,
        params: dict,
        *,
        what: str,
        timeout: float | None = None,
        check: Callable[[httpx.Response], None] | None = None,
        retry_reported: bool = True,
    ) -> httpx.Response:
        """GET with the concurrency limit, the rate limit and retries.

        ``check`` may raise ``_Retryable`` for a body that is not right; with
        ``retry_reported`` false, errors SkyServer explains in JSON are final.
        """
        timeout = timeout or self.timeout
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._delay(attempt))
            try:
                async with self._semaphore:
                    await self._rate.wait()
                    self.requests_sent += 1
                    # A hard deadline per attempt: httpx's timeouts are per read, and a
                    # server trickling bytes would never trip them.
                    async with asyncio.timeout(timeout):
                        response = await self._http.get(path, params=params)
                status = response.status_code
                if status >= 500 or status == 429:
                    if not retry_reported and _is_reported_error(response):
                        raise _http_error(response, what)
                    raise _Retryable(_http_error(response, what))
                if status >= 400:
                    raise _http_error(response, what)
                if check is not None:
                    check(response)
                return response
            except (TimeoutError, httpx.TimeoutException):
                error: SkyServerError = SkyServerTimeout(
                    f"SkyServer {what}: no answer within {timeout:g} s", "timeout"
                )
            except httpx.TransportError as exc:
                reason = one_line(str(exc), 80) or type(exc).__name__
                error = SkyServerUpstreamError(f"SkyServer {what}: {reason}", reason)
            except _Retryable as exc:
                error = exc.error
        if attempts > 1:
            error.reason = f"{error.reason} ({attempts} attempts)"
            error.args = (f"{error.args[0]} ({attempts} attempts)",)
        raise error


def _is_reported_error(response: httpx.Response) -> bool:
    """Whether the answer is one of SkyServer's own JSON error reports."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "ErrorMessage" in body


def _http_error(response: httpx.Response, what: str) -> SkyServerUpstreamError:
    reason = f"HTTP {response.status_code}"
    detail = server_message(response.text) if response.content else ""
    message = f"SkyServer {what}: {reason}" + (f": {detail}" if detail else "")
    return SkyServerUpstreamError(message, reason)
