"""The one SDSS SkyServer client: image cutouts (``getjpeg``) and SQL search (``SqlSearch``).

Used by ``galmet download`` and ``galmet catalog``, and by the service and the worker, so it
imports nothing from FastAPI. One pooled ``httpx.AsyncClient`` per ``SkyServerClient``;
create it, use it and close it within one event loop::

    async with SkyServerClient(url, concurrency=8, rate=10) as sky:
        jpeg = await sky.cutout(150.1, 2.2)
        table = await sky.sql("SELECT TOP 10 objID, ra, dec FROM Galaxy")

Politeness: at most ``concurrency`` requests in flight (a semaphore) and request starts
spaced at least ``1 / rate`` seconds apart (aiolimiter), shared by every task using the
client. Failures that may pass (HTTP 5xx and 429, timeouts, connection errors, truncated or
undecodable JPEGs) are retried ``retries`` times with exponential backoff and full jitter
(tenacity); other 4xx answers are not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import httpx
import numpy as np

from galmet import __version__
from galmet.errors import GalmetError
from galmet.images import decode_jpeg, is_blank
from galmet.sky import check_position
from galmet.text import one_line

if TYPE_CHECKING:
    from astropy.table import Table

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
#: SkyServer stops a SQL query after 600 s and says so; the client waits a little longer, so
#: that it hears the server's own answer rather than timing out first.
SERVER_SQL_LIMIT = 600.0
DEFAULT_SQL_TIMEOUT = SERVER_SQL_LIMIT + 60.0

#: getjpeg only serves sizes in this range (pixels).
MIN_SIZE, MAX_SIZE = 64, 2048


class SkyServerError(GalmetError):
    """SkyServer could not give what was asked. ``reason`` is short, for tables and logs."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class SkyServerUpstreamError(SkyServerError):
    """SkyServer answered with an error or with garbage, or could not be reached (HTTP 502)."""


class SkyServerTimeout(SkyServerError):
    """SkyServer did not answer in time (HTTP 504)."""


class SkyServerQueryError(SkyServerUpstreamError):
    """SkyServer refused a SQL query and said why (its ``error_message`` answer, or a JSON
    ``ErrorMessage``): the same query would fail again, so it is not retried."""


class _Retryable(Exception):
    """Internal: wraps an error worth another attempt."""

    def __init__(self, error: SkyServerError) -> None:
        self.error = error


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
    from astropy.table import Table  # only SQL needs it: the core imports without astropy

    if not rest.strip():
        return Table()
    header = rest.partition("\n")[0].strip().strip('"').lower()
    if header == "error_message":
        # SkyServer refuses some queries (TOP above its row limit, …) with a normal CSV whose
        # one column is the reason.
        message = one_line(rest.partition("\n")[2].strip().strip('"')) or "no reason given"
        raise SkyServerQueryError(f"SkyServer refused the SQL query: {message}", message)
    try:
        return Table.read(rest, format="ascii.csv")
    except Exception as exc:  # astropy raises several types for malformed CSV
        raise SkyServerUpstreamError(
            f"SkyServer SQL search returned unreadable CSV: {one_line(str(exc))}", "bad CSV"
        ) from exc


@dataclass(frozen=True)
class Cutout:
    """A fetched ``getjpeg`` cutout: the JPEG as sent, and its pixels, decoded once."""

    jpeg: bytes
    pixels: np.ndarray  # RGB uint8 (height, width, 3)
    #: SkyServer answered 404 with a JPEG (the error drawn on an image): outside the imaging.
    off_footprint: bool = False

    @property
    def blank(self) -> bool:
        """No imaging here: SkyServer's 404 image, or its older empty (near-black) one."""
        return self.off_footprint or is_blank(self.pixels)


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
        # Imported here, as tenacity is in _get: the predictor reads this module's cutout
        # geometry, and training runs on a bare GPU machine that has neither package.
        from aiolimiter import AsyncLimiter

        # One request start per 1/rate seconds: a bucket of one, so no bursts.
        self._limiter = AsyncLimiter(1, 1.0 / rate) if rate else None
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
    ) -> Cutout:
        """The ``getjpeg`` cutout centred on (ra, dec) in degrees: complete JPEG bytes and
        their pixels (decoded once, here, to check the body).

        Off the imaging footprint SkyServer answers HTTP 404 with a JPEG body (the error drawn
        on an image; older versions a near-black 200): both are a ``Cutout`` whose ``blank``
        is true, not an error. A 404 whose body is not a JPEG is an error.
        """
        check_position(ra, dec)
        if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
            raise ValueError(f"cutout size must be {MIN_SIZE}..{MAX_SIZE} px")
        if not scale > 0:
            raise ValueError("scale must be positive")
        decoded: list[np.ndarray] = []

        what = f"cutout at {ra} {dec}"

        def check(response: httpx.Response) -> None:
            if response.status_code == 404:
                try:  # the off-footprint image: any size, SkyServer draws its message on it
                    decoded.append(decode_jpeg(response.content))
                except ValueError:
                    raise _http_error(response, what) from None
                return
            try:
                decoded.append(decode_jpeg(response.content, (width, height)))
            except ValueError as exc:
                raise _Retryable(SkyServerUpstreamError(f"bad cutout: {exc}", str(exc))) from exc

        params = {"ra": ra, "dec": dec, "scale": scale, "width": width, "height": height}
        response = await self._get(
            "SkyServerWS/ImgCutout/getjpeg", params, what=what, check=check, accept={404}
        )
        return Cutout(response.content, decoded[-1], off_footprint=response.status_code == 404)

    async def sql(self, query: str) -> Table:
        """Run a SQL query (T-SQL dialect, at most 500,000 rows) and return the rows.

        A query SkyServer rejects (its ``error_message`` CSV, or an HTTP error with its JSON
        ``ErrorMessage``) raises ``SkyServerQueryError`` with the server's reason and is not
        retried: the same query would fail again. Nor is one that timed out: SkyServer stops
        queries at ``SERVER_SQL_LIMIT`` and would only run it to the limit again.
        """
        params = {"cmd": query, "format": "csv"}
        response = await self._get(
            "SkyServerWS/SearchTools/SqlSearch",
            params,
            what="SQL search",
            timeout=self.sql_timeout,
            retry_reported=False,
            retry_timeouts=False,
        )
        return parse_sql_csv(response.text)

    async def _get(
        self,
        path: str,
        params: dict,
        *,
        what: str,
        timeout: float | None = None,
        check: Callable[[httpx.Response], None] | None = None,
        retry_reported: bool = True,
        retry_timeouts: bool = True,
        accept: set[int] = frozenset(),
    ) -> httpx.Response:
        """GET with the concurrency limit, the rate limit and retries (see the module).

        ``check`` may raise ``_Retryable`` for a body that is not right; statuses in
        ``accept`` go to ``check`` instead of being errors. With ``retry_reported`` false,
        errors SkyServer explains in JSON are final; with ``retry_timeouts`` false, so is a
        timeout.
        """
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )

        timeout = timeout or self.timeout
        attempts = self.retries + 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            # Full jitter, so that parallel tasks do not retry in step.
            wait=wait_random_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception(
                lambda e: (
                    isinstance(e, _Retryable)
                    and (retry_timeouts or not isinstance(e.error, SkyServerTimeout))
                )
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(
                        path, params, what, timeout, check, retry_reported, accept
                    )
        except _Retryable as exc:
            if not retry_timeouts and isinstance(exc.error, SkyServerTimeout):
                raise exc.error from None
            error = exc.error
            if attempts > 1:
                error.reason = f"{error.reason} ({attempts} attempts)"
                error.args = (f"{error.args[0]} ({attempts} attempts)",)
            raise error from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(
        self,
        path: str,
        params: dict,
        what: str,
        timeout: float,
        check: Callable[[httpx.Response], None] | None,
        retry_reported: bool,
        accept: set[int] = frozenset(),
    ) -> httpx.Response:
        """One request: the response, ``_Retryable`` for a failure that may pass, or a final
        ``SkyServerError``."""
        try:
            async with self._semaphore:
                if self._limiter is not None:
                    await self._limiter.acquire()
                self.requests_sent += 1
                # A hard deadline per attempt: httpx's timeouts are per read, and a server
                # trickling bytes would never trip them.
                async with asyncio.timeout(timeout):
                    response = await self._http.get(path, params=params)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable(
                SkyServerTimeout(f"SkyServer {what}: no answer within {timeout:g} s", "timeout")
            ) from None
        except httpx.TransportError as exc:
            reason = one_line(str(exc), 80) or type(exc).__name__
            error = SkyServerUpstreamError(f"SkyServer {what}: {reason}", reason)
            raise _Retryable(error) from None
        status = response.status_code
        if status >= 500 or status == 429:
            if not retry_reported and _is_reported_error(response):
                raise _reported_error(response, what)
            raise _Retryable(_http_error(response, what))
        if status >= 400 and status not in accept:
            raise _http_error(response, what)
        if check is not None:
            check(response)
        return response


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


def _reported_error(response: httpx.Response, what: str) -> SkyServerQueryError:
    """A SQL error SkyServer explained (HTTP 500 with a JSON ``ErrorMessage``)."""
    message = server_message(response.text)
    return SkyServerQueryError(f"SkyServer {what}: HTTP {response.status_code}: {message}", message)
