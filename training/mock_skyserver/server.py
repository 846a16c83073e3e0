"""The mock SkyServer's HTTP side: an ASGI app answering SkyServer's calls from the mock sky.

It answers the two SkyServer web-service calls galmet makes, in the real formats, under
``/{release}/SkyServerWS/...`` for any release segment ``dr<N>``:

``GET /{release}/SkyServerWS/ImgCutout/getjpeg?ra=&dec=&scale=&width=&height=&opt=``
    ``image/jpeg`` from :meth:`MockSky.cutout_jpeg`. Defaults as the real service:
    ``scale=0.396127`` arcsec/px, ``width=height=128``; ``opt`` (overlays) is accepted and
    ignored. Centred outside the imaging footprint, the answer is what current SkyServerWS
    sends: HTTP 404 with a JPEG body, the error drawn on an image (``off_footprint="black"``:
    older SkyServer's near-black frame with 200). ``ra``/``dec`` may be decimal degrees or
    sexagesimal (``hh:mm:ss``, ``dd:mm:ss``) as in the real service.

``GET /{release}/SkyServerWS/SearchTools/SqlSearch?cmd=<SQL>&format=csv``
    The query runs for real on an in-memory SQLite copy of the mock population, laid out
    with SkyServer's table names (``PhotoObjAll``/``PhotoObj``/``PhotoPrimary``/``Galaxy``/
    ``Star``, ``SpecObjAll``/``SpecObj``, ``GalSpecInfo``, ``GalSpecExtra``, ``GalSpecLine``).
    The T-SQL our queries use is translated (``sql.translate_tsql``): ``SELECT [DISTINCT] TOP
    n`` becomes ``LIMIT n``, ``dbo.`` prefixes are dropped, ``CROSS APPLY`` with the
    positional functions ``fGetNearestObjEq``/``fGetNearbyObjEq`` (real table-valued functions
    of the engine, ``objects.py``) and named ``VALUES`` lists work; other T-SQL fails as a SQL
    error would. The body is ``#Table1``, a header row, then CSV rows, ``text/plain``. At most
    ``max_rows`` (500,000) rows are returned; longer results are cut silently, but a ``TOP``
    above the limit is refused as SkyServer refuses it: a 200 CSV whose one column is
    ``error_message``. The database is read-only.

How this mirrors the real service, from the SkyServer web-service source
(github.com/sciserver/SkyServerWS, ``Sciserver_webService``):

- ``SqlSearch`` wraps the query in ``spExecuteSQL`` with the configured ``MaxRows`` row
  limit (500,000 on the public site, per SciServer's ``SkyServer.sqlSearch`` docs), which
  truncates without an error.
- CSV output (``OutputUtils.writeCSV``): ``#Table1`` line, header, rows joined by ``,`` and
  ``\\n``; NULL is an empty field; only strings containing a comma are quoted.
- Errors, for every format except ``html``, come from its ``ExceptionHandleAttribute``: an
  HTTP error status with a JSON body ``{"ErrorCode": 500, "ErrorType":
  "InternalServerError", "ErrorMessage": "...", "LogMessageID": "..."}``
  (``application/json``). Bad or missing parameters are ``ArgumentException`` → 400
  ``BadRequest``; SQL errors are generic exceptions → 500 ``InternalServerError``.
  A client therefore tells a SQL error from a CSV answer by the status and by the body
  not starting with ``#Table``; the JSON ``ErrorMessage`` is the line to show a user.
- ``getjpeg`` validates that ``ra``, ``dec``, ``scale`` are numbers (400 otherwise). The
  real service *clamps* width/height to 64…2048 and scale to 0.015…2400 and wraps ra/dec;
  this mock is stricter on purpose and answers 400 for width/height outside 64…2048,
  scale outside 0.015…60, ra outside [0, 360), dec outside [-90, 90] and non-finite
  values, so a client bug shows up in tests instead of as a silently resized image.

Paths are matched case-sensitively with the canonical spelling above (IIS would not care).

Fault injection (:class:`~galmet.training.mock_skyserver.faults.Faults`) applies to the two
SkyServer endpoints only.

``GET /mock/stats`` gives request counts per endpoint and counts of injected faults;
``POST /mock/reset`` zeroes them.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from galmet.skyserver import MAX_SIZE, MIN_SIZE
from galmet.training.mock_skyserver.faults import Faults, MockState
from galmet.training.mock_skyserver.objects import field_rows
from galmet.training.mock_skyserver.sql import MAX_ROWS, TOP, SkySQL, SQLError, csv_table

#: Default cutout parameters of the real getjpeg.
DEFAULT_SCALE = 0.396127
DEFAULT_SIZE = 128
MIN_SCALE, MAX_SCALE = 0.015, 60.0

#: A data-release path segment; any release is served.
RELEASE = re.compile(r"[dD][rR][0-9]+")


def skyserver_error(status: int, message: str, log_id: int = 0) -> JSONResponse:
    """An error answer shaped like SkyServerWS's (non-HTML formats)."""
    kinds = {400: "BadRequest", 404: "NotFound", 500: "InternalServerError"}
    body = {
        "ErrorCode": status,
        "ErrorType": kinds.get(status, "InternalServerError"),
        "ErrorMessage": message,
        "LogMessageID": f"mock-{log_id}",
    }
    return JSONResponse(body, status_code=status)


class _BadParameter(Exception):
    pass


def _number(params: Any, name: str, default: float | None = None, sexagesimal: str = "") -> float:
    raw = params.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise _BadParameter(
                "There are not enough parameters to process your request. Enter position "
                "(ra,dec) values properly. ra must be in [0,360], dec must be in [-90,90]."
            )
        return default
    try:
        if sexagesimal and ":" in raw:
            from astropy.coordinates import Angle

            value = Angle(raw.strip(), unit=sexagesimal).degree
        else:
            value = float(raw)
    except ValueError:
        raise _BadParameter(
            f"The input values are not in correct format: {name}={raw!r} is not a number."
        ) from None
    if not math.isfinite(value):
        raise _BadParameter(f"{name} must be a finite number, got {raw!r}.")
    return float(value)


def _size(params: Any, name: str) -> int:
    value = _number(params, name, DEFAULT_SIZE)
    if value != int(value) or not MIN_SIZE <= value <= MAX_SIZE:
        raise _BadParameter(
            f"{name} must be an integer in [{MIN_SIZE},{MAX_SIZE}], got {params.get(name)!r}."
        )
    return int(value)


def create_app(
    sky: Any,
    faults: Faults | None = None,
    max_rows: int = MAX_ROWS,
    render_threads: int | None = None,
    cutout_cache: int = 0,
    off_footprint: str = "404",
    duplicate_every: int = 0,
) -> Starlette:
    """The mock SkyServer as an ASGI app serving ``sky`` (a :class:`MockSky`; the SQL side
    needs only its ``population``).

    Cutouts render in worker threads, so ``sky.cutout_jpeg`` must be thread-safe;
    ``render_threads`` bounds how many render at once (default: the CPU count).
    ``max_rows`` is the row limit of one SQL query. ``cutout_cache`` keeps that many rendered
    cutouts in memory (rendering is deterministic), so that a benchmark that asks for the same
    cutouts again measures the client, not GalSim. ``off_footprint``: ``404`` (current
    SkyServer) or ``black`` (older). ``duplicate_every``: every k-th galaxy has a second
    science-primary spectrum (0: none).
    """
    if off_footprint not in ("404", "black"):
        raise ValueError(f"off_footprint must be 404 or black, not {off_footprint!r}")
    faults = faults or Faults()
    state = MockState(faults)
    sample = sky.population[sky.in_sample] if hasattr(sky, "in_sample") else sky.population
    db = SkySQL(
        sky.population,
        max_rows=max_rows,
        field=field_rows(sky, sample),
        duplicate_every=duplicate_every,
    )
    limiter = anyio.CapacityLimiter(render_threads or os.cpu_count() or 4)

    def render(*args: Any) -> bytes:  # looked up per call: a SQL-only sky has no images
        return sky.cutout_jpeg(*args)

    if cutout_cache:
        render = functools.lru_cache(cutout_cache)(render)

    async def getjpeg(request: Request) -> Response:
        if not RELEASE.fullmatch(request.path_params["release"]):
            return await not_found(request)
        early, truncate = await state.inject(request, "getjpeg")
        if early is not None:
            return early
        p = request.query_params
        try:
            ra = _number(p, "ra", sexagesimal="hourangle")
            dec = _number(p, "dec", sexagesimal="deg")
            scale = _number(p, "scale", DEFAULT_SCALE)
            width, height = _size(p, "width"), _size(p, "height")
            if not 0.0 <= ra < 360.0 or not -90.0 <= dec <= 90.0:
                raise _BadParameter("ra must be in [0,360), dec must be in [-90,90].")
            if not MIN_SCALE <= scale <= MAX_SCALE:
                raise _BadParameter(f"scale must be in [{MIN_SCALE}, {MAX_SCALE}].")
        except _BadParameter as exc:
            return skyserver_error(400, str(exc), state.requests.total())
        if (
            off_footprint == "404"
            and hasattr(sky, "in_footprint")
            and not sky.in_footprint(ra, dec)
        ):
            return Response(
                _off_footprint_image(ra, dec, width, height), 404, media_type="image/jpeg"
            )
        jpeg = await anyio.to_thread.run_sync(
            render, ra, dec, scale, width, height, limiter=limiter
        )
        if truncate:
            state.injected["truncate"] += 1
            jpeg = jpeg[: len(jpeg) // 2]
        return Response(jpeg, media_type="image/jpeg")

    async def sqlsearch(request: Request) -> Response:
        if not RELEASE.fullmatch(request.path_params["release"]):
            return await not_found(request)
        early, _ = await state.inject(request, "sqlsearch")
        if early is not None:
            return early
        log_id = state.requests.total()
        cmd = request.query_params.get("cmd")
        if not cmd or not cmd.strip():
            return skyserver_error(
                400, "There are not enough parameters to process your request.", log_id
            )
        fmt = request.query_params.get("format", "csv").lower()
        if fmt not in ("csv", "txt", "text/plain"):
            return skyserver_error(
                400, f"mock-skyserver only answers format=csv, not {fmt!r}.", log_id
            )
        top = TOP.match(cmd.strip())
        if top and int(top.group(2)) > db.max_rows:
            # SkyServer's own refusal: a normal CSV answer whose one column is the reason.
            reason = (
                f"Query error: TOP {int(top.group(2))} asks for more rows than the limit of "
                f"{db.max_rows} per query"
            )
            return Response(csv_table(["error_message"], [(reason,)]), media_type="text/plain")
        try:
            body = await anyio.to_thread.run_sync(lambda: csv_table(*db.query(cmd)))
        except (SQLError, ValueError, OverflowError) as exc:
            return skyserver_error(500, f"SQL error: {exc}", log_id)
        return Response(body, media_type="text/plain")

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse(state.stats())

    async def not_found(request: Request) -> Response:
        return skyserver_error(404, f"No such SkyServer release or tool: {request.url.path}")

    release = "{release}"
    routes = [
        Route(f"/{release}/SkyServerWS/ImgCutout/getjpeg", getjpeg, methods=["GET"]),
        Route(f"/{release}/SkyServerWS/SearchTools/SqlSearch", sqlsearch, methods=["GET"]),
        Route("/mock/stats", stats, methods=["GET"]),
        Route("/mock/reset", reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.mock = state
    app.state.sql = db
    return app


@functools.lru_cache(maxsize=64)
def _off_footprint_image(ra: float, dec: float, width: int, height: int) -> bytes:
    """What SkyServer sends with its 404 off the imaging: its message drawn on an image."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.text((4, height // 2 - 12), "No imaging", fill=(255, 80, 80))
    draw.text((4, height // 2), f"{ra:.4f} {dec:+.4f}", fill=(255, 80, 80))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
