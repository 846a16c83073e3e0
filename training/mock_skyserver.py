"""``galmet mock-skyserver``: a local stand-in for SDSS SkyServer, backed by the mock sky.

It answers the two SkyServer web-service calls galmet makes, in the real formats, under
``/{release}/SkyServerWS/...`` for any release segment ``dr<N>``:

``GET /{release}/SkyServerWS/ImgCutout/getjpeg?ra=&dec=&scale=&width=&height=&opt=``
    ``image/jpeg`` from :meth:`MockSky.cutout_jpeg`. Defaults as the real service:
    ``scale=0.396127`` arcsec/px, ``width=height=128``; ``opt`` (overlays) is accepted and
    ignored. Outside the footprint the mock renders its near-black frame, served with 200 as
    the real service does. ``ra``/``dec`` may be decimal degrees or sexagesimal (``hh:mm:ss``,
    ``dd:mm:ss``) as in the real service.

``GET /{release}/SkyServerWS/SearchTools/SqlSearch?cmd=<SQL>&format=csv``
    The query runs for real on an in-memory SQLite copy of the mock population, laid out
    with SkyServer's table names (``PhotoObjAll``/``PhotoObj``/``PhotoPrimary``/``Galaxy``/
    ``Star``, ``SpecObjAll``/``SpecObj``, ``GalSpecInfo``, ``GalSpecExtra``, ``GalSpecLine``).
    The T-SQL our queries use is translated: ``SELECT [DISTINCT] TOP n`` becomes
    ``LIMIT n`` and ``dbo.`` prefixes are dropped; other T-SQL (functions such as
    ``dbo.fGetNearbyObjEq``, ``TOP`` inside sub-queries) is not supported and fails as a
    SQL error would. The body is ``#Table1``, a header row, then CSV rows, ``text/plain``.
    At most ``max_rows`` (500,000) rows are returned; longer results are cut silently.
    The database is read-only.

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

Fault injection (:class:`Faults`) applies to the two SkyServer endpoints only and is
deterministic: whether a request is hit depends on the seed, the request URL and how many
times that URL was requested before (so a retry draws again, whatever the concurrency).

``GET /mock/stats`` gives request counts per endpoint and counts of injected faults;
``POST /mock/reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import os
import re
import socket
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from galmet.errors import GalmetError
from galmet.skyserver import MAX_SIZE, MIN_SIZE
from galmet.training.sample import BANDS

#: Row limit of one SkyServer SQL query (``MaxRows`` of the public site).
MAX_ROWS = 500_000
#: Default cutout parameters of the real getjpeg.
DEFAULT_SCALE = 0.396127
DEFAULT_SIZE = 128
MIN_SCALE, MAX_SCALE = 0.015, 60.0

# Population columns copied into each SkyServer table (SpecObj's bestObjID is objID).
_PHOTO_COLUMNS = (
    ["objID", "ra", "dec"]
    + [f"modelMag_{b}" for b in BANDS]
    + [f"modelMagErr_{b}" for b in BANDS]
    + [f"petroMag_{b}" for b in BANDS]
    + [f"petroMagErr_{b}" for b in BANDS]
    + ["petroR50_r", "petroR90_r"]
)
_SPEC_COLUMNS = ["specObjID", "bestObjID", "ra", "dec", "z", "zErr", "rChi2", "class"]
_EXTRA_COLUMNS = [
    "specObjID",
    "oh_p16",
    "oh_p50",
    "oh_p84",
    "lgm_tot_p50",
    "sfr_tot_p50",
    "bptclass",
]
_INFO_COLUMNS = ["specObjID", "ra", "dec", "z"]

#: A data-release path segment; any release is served.
_RELEASE = re.compile(r"[dD][rR][0-9]+")
# Photometric type codes of PhotoObj.type.
TYPE_GALAXY, TYPE_STAR = 3, 6


@dataclass(frozen=True)
class Faults:
    """What can go wrong, as fractions of requests to the SkyServer endpoints.

    ``fail_rate``: answered HTTP 500 with an HTML error page. ``latency``: seconds added
    to every answer. ``truncate_rate``: JPEG answers cut to half their length (with a
    matching Content-Length). ``timeout_rate``: requests that hang ``hang_seconds`` before
    answering, far longer than a sane client timeout. ``seed`` makes the draws repeatable.
    """

    fail_rate: float = 0.0
    latency: float = 0.0
    truncate_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fail_rate", "truncate_rate", "timeout_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise GalmetError(f"{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.latency < 0 or self.hang_seconds < 0:
            raise GalmetError("latency and hang time must not be negative")


# ---------------------------------------------------------------------------------------
# The SQL side


class SkySQL:
    """An in-memory, read-only SQLite copy of the mock population with SkyServer's tables."""

    def __init__(self, population: Any, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        # One connection shared by the worker threads; the lock serialises queries.
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self._load(population)
        self._conn.execute("PRAGMA query_only = ON")

    def _load(self, pop: Any) -> None:
        n = len(pop)
        cols = set(pop.colnames)

        def values(name: str) -> list[Any]:
            return _column_values(pop[name])

        if "type" in cols:
            ptype = values("type")
        else:
            # Spectroscopic stars are point sources; everything else is extended.
            ptype = [
                TYPE_STAR if str(c).strip().upper() == "STAR" else TYPE_GALAXY for c in pop["class"]
            ]
        photo = {c: values(c) for c in _PHOTO_COLUMNS} | {"type": ptype}
        spec = {c: values(c) for c in _SPEC_COLUMNS if c != "bestObjID"}
        spec["bestObjID"] = values("objID")
        spec["sciencePrimary"] = [1] * n
        extra = {c: values(c) for c in _EXTRA_COLUMNS}
        info = {c: values(c) for c in _INFO_COLUMNS} | {"reliable": [1] * n}
        line = {"specObjID": values("specObjID")}

        c = self._conn
        _create(c, "PhotoObjAll", photo, key="objID")
        _create(c, "SpecObjAll", spec, key="specObjID")
        _create(c, "GalSpecInfo", info, key="specObjID")
        _create(c, "GalSpecExtra", extra, key="specObjID")
        _create(c, "GalSpecLine", line, key="specObjID")
        c.execute("CREATE INDEX SpecObjAll_bestObjID ON SpecObjAll (bestObjID)")
        # The mock has one observation per object, so every object is primary.
        c.execute("CREATE VIEW PhotoObj AS SELECT * FROM PhotoObjAll")
        c.execute("CREATE VIEW PhotoPrimary AS SELECT * FROM PhotoObjAll")
        c.execute(f"CREATE VIEW Galaxy AS SELECT * FROM PhotoObjAll WHERE type = {TYPE_GALAXY}")
        c.execute(f"CREATE VIEW Star AS SELECT * FROM PhotoObjAll WHERE type = {TYPE_STAR}")
        c.execute("CREATE VIEW SpecObj AS SELECT * FROM SpecObjAll WHERE sciencePrimary = 1")
        c.commit()

    def query(self, tsql: str) -> tuple[list[str], list[tuple]]:
        """Run a SkyServer (T-SQL) query; return column names and at most ``max_rows`` rows.

        Raises ``sqlite3.Error`` for anything SQLite rejects.
        """
        sql = translate_tsql(tsql)
        with self._lock:
            cur = self._conn.execute(sql)
            names = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(self.max_rows)
            cur.close()
        return names, rows


def _column_values(col: Any) -> list[Any]:
    """Plain Python values of a table column, masked entries as None (SQL NULL)."""
    data = np.ma.asarray(col)
    out = data.data.tolist()
    mask = np.ma.getmaskarray(data)
    if mask.any():
        out = [None if m else v for v, m in zip(out, mask.tolist(), strict=True)]
    return [v.decode() if isinstance(v, bytes) else v for v in out]


def _create(conn: sqlite3.Connection, table: str, columns: dict[str, list], key: str) -> None:
    def sqltype(name: str, sample: Any) -> str:
        if isinstance(sample, bool | int):
            return "INTEGER PRIMARY KEY" if name == key else "INTEGER"
        return "REAL" if isinstance(sample, float) else "TEXT"

    names = list(columns)
    decl = ", ".join(
        f"[{name}] {sqltype(name, next((v for v in columns[name] if v is not None), 0.0))}"
        for name in names
    )
    conn.execute(f"CREATE TABLE {table} ({decl})")
    marks = ", ".join("?" for _ in names)
    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", zip(*columns.values(), strict=True))


_TOP = re.compile(r"^\s*SELECT\s+(DISTINCT\s+|ALL\s+)?TOP\s*\(?\s*(\d+)\s*\)?\s", re.IGNORECASE)


def translate_tsql(tsql: str) -> str:
    """Translate the T-SQL bits galmet uses into SQLite: ``SELECT TOP n`` → ``LIMIT n``,
    ``dbo.`` prefixes dropped. Comments are removed first, as SkyServer does."""
    sql = re.sub(r"/\*.*?\*/", " ", tsql, flags=re.DOTALL)
    sql = re.sub(r"--[^\r\n]*", "", sql)
    sql = re.sub(r"\bdbo\.", "", sql, flags=re.IGNORECASE)
    sql = sql.strip().rstrip(";").strip()
    match = _TOP.match(sql)
    if match:
        distinct = match.group(1) or ""
        sql = f"SELECT {distinct}{sql[match.end() :]}\nLIMIT {int(match.group(2))}"
    return sql


def csv_table(names: list[str], rows: list[tuple]) -> str:
    """SkyServer's CSV: ``#Table1``, header, rows; NULL empty, comma-strings quoted."""

    def field(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return repr(v)  # shortest text that reads back to the same double
        s = str(v)
        return f'"{s}"' if isinstance(v, str) and "," in s and not s.startswith('"') else s

    lines = ["#Table1", ",".join(names)]
    lines += [",".join(field(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# The HTTP side


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


_INJECTED_500 = (
    "<html><head><title>500 Internal Server Error</title></head><body>"
    "<h1>Internal Server Error</h1><p>mock-skyserver: injected failure</p></body></html>\n"
)


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


class _MockState:
    """Counters and fault draws shared by the handlers (all run on the event loop)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()

    def draw(self, kind: str, key: str, attempt: int) -> float:
        """A uniform number in [0, 1) fixed by (seed, kind, request URL, attempt)."""
        text = f"{self.faults.seed}|{kind}|{key}|{attempt}".encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def stats(self) -> dict[str, Any]:
        return {
            "getjpeg": self.requests["getjpeg"],
            "sqlsearch": self.requests["sqlsearch"],
            "total": sum(self.requests.values()),
            "injected": {k: self.injected[k] for k in ("fail", "timeout", "truncate")},
        }


def create_app(
    sky: Any,
    faults: Faults | None = None,
    max_rows: int = MAX_ROWS,
    render_threads: int | None = None,
    cutout_cache: int = 0,
) -> Starlette:
    """The mock SkyServer as an ASGI app serving ``sky`` (a :class:`MockSky`; the SQL side
    needs only its ``population``).

    Cutouts render in worker threads, so ``sky.cutout_jpeg`` must be thread-safe;
    ``render_threads`` bounds how many render at once (default: the CPU count).
    ``max_rows`` is the row limit of one SQL query. ``cutout_cache`` keeps that many rendered
    cutouts in memory (rendering is deterministic), so that a benchmark that asks for the same
    cutouts again measures the client, not GalSim.
    """
    faults = faults or Faults()
    state = _MockState(faults)
    db = SkySQL(sky.population, max_rows=max_rows)
    limiter = anyio.CapacityLimiter(render_threads or os.cpu_count() or 4)

    def render(*args: Any) -> bytes:  # looked up per call: a SQL-only sky has no images
        return sky.cutout_jpeg(*args)

    if cutout_cache:
        render = functools.lru_cache(cutout_cache)(render)

    async def injected(request: Request, endpoint: str) -> tuple[Response | None, bool]:
        """Count the request and apply latency/hang/failure. Returns an early answer (or
        None) and whether this answer is to be truncated."""
        state.requests[endpoint] += 1
        key = str(request.url.path) + "?" + str(request.url.query)
        attempt = state.attempts[key]
        state.attempts[key] += 1
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if faults.timeout_rate and state.draw("timeout", key, attempt) < faults.timeout_rate:
            state.injected["timeout"] += 1
            await asyncio.sleep(faults.hang_seconds)
        if faults.fail_rate and state.draw("fail", key, attempt) < faults.fail_rate:
            state.injected["fail"] += 1
            return Response(_INJECTED_500, status_code=500, media_type="text/html"), False
        truncate = bool(faults.truncate_rate) and (
            state.draw("truncate", key, attempt) < faults.truncate_rate
        )
        return None, truncate

    async def getjpeg(request: Request) -> Response:
        if not _RELEASE.fullmatch(request.path_params["release"]):
            return await not_found(request)
        early, truncate = await injected(request, "getjpeg")
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
        jpeg = await anyio.to_thread.run_sync(
            render, ra, dec, scale, width, height, limiter=limiter
        )
        if truncate:
            state.injected["truncate"] += 1
            jpeg = jpeg[: len(jpeg) // 2]
        return Response(jpeg, media_type="image/jpeg")

    async def sqlsearch(request: Request) -> Response:
        if not _RELEASE.fullmatch(request.path_params["release"]):
            return await not_found(request)
        early, _ = await injected(request, "sqlsearch")
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
        try:
            body = await anyio.to_thread.run_sync(lambda: csv_table(*db.query(cmd)))
        except (sqlite3.Error, ValueError, OverflowError) as exc:
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


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port); we bind it ourselves so that port 0
    works and a busy port is an OSError we can report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and
    # without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    release: str = "dr17",
    lifespan: str = "off",
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its SkyServer base URL.

    The URL includes the release, like the real one (``http://127.0.0.1:54321/dr17``), so
    it can be handed to ``SkyServerClient(base_url)`` as is; ``release=""`` gives the bare
    address (for serving other apps, e.g. galmet's own, with ``lifespan="on"``).
    ``port=0`` picks a free port. The server is stopped on exit; requests still hanging
    are cut after a second.
    """
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan=lifespan, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        daemon=True,
        name=f"mock-skyserver:{bound_port}",
    )
    thread.start()
    try:
        for _ in range(6000):  # an app's lifespan may load a model first
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("mock SkyServer did not start")
        yield f"http://{host}:{bound_port}" + (f"/{release}" if release else "")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# ---------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--n",
        type=int,
        default=2000,
        help="number of sample galaxies in the mock sky (default 2000)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the mock sky and of the fault draws (default 0)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="serve the sky of a `galmet simulate` directory (its mock.json)",
    )
    parser.add_argument(
        "--release",
        default="dr17",
        help="data release in the advertised base URL (any dr<N> is served)",
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="fraction of requests answered HTTP 500"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument(
        "--cutout-cache",
        type=int,
        default=0,
        help="keep this many rendered cutouts in memory (benchmarks; default 0)",
    )
    parser.add_argument(
        "--truncate-rate", type=float, default=0.0, help="fraction of JPEGs cut short"
    )
    parser.add_argument(
        "--timeout-rate", type=float, default=0.0, help="fraction of requests that hang for 30 s"
    )


def load_sky(data: Path | None, n: int, seed: int) -> Any:
    """The MockSky that ``galmet simulate`` wrote to ``data`` (its mock.json), or a fresh
    one of ``n`` galaxies from ``seed``."""
    from galmet.training.mocksky import MockSky

    if data is None:
        if n < 1:
            raise GalmetError(f"--n must be at least 1, got {n}")
        return MockSky(n, seed=seed)
    meta_path = data / "mock.json"
    if not meta_path.is_file():
        raise GalmetError(f"{meta_path} not found: is {data} a `galmet simulate` directory?")
    try:
        return MockSky.from_dir(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalmetError(f"{meta_path} does not describe a mock sky: {exc}") from None


def main(args: argparse.Namespace) -> int:
    if not _RELEASE.fullmatch(args.release):
        raise GalmetError(f"--release must look like dr17, got {args.release!r}")
    faults = Faults(
        fail_rate=args.fail_rate,
        latency=args.latency,
        truncate_rate=args.truncate_rate,
        timeout_rate=args.timeout_rate,
        seed=args.seed,
    )
    # Take the port before the (slower) sky is built, so a busy port fails at once.
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        raise GalmetError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    print("building the mock sky ...", file=sys.stderr)
    try:
        sky = load_sky(args.data, args.n, args.seed)
        app = create_app(sky, faults=faults, cutout_cache=args.cutout_cache)
    except BaseException:
        sock.close()
        raise
    print(
        f"mock SkyServer: {int(np.count_nonzero(sky.in_sample))} sample galaxies of "
        f"{len(sky.population)} spectra at http://{args.host}:{port}/{args.release}",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
