"""IVOA Simple Cone Search: ``GET /scs?RA=&DEC=&SR=`` (also under ``/api/v1``).

SCS 1.03 with SCS 1.1's MAXREC and RESPONSEFORMAT: decimal degrees (ICRS), parameter names in
any case, unknown parameters ignored. Every answer, errors included, is a VOTable
(``galmet.app.scs``); an error keeps its HTTP status (400 bad parameters or a cone over the
caps, 502/504 SkyServer, 503 not ready), and its body is SCS's ``INFO name="Error"``.
"""

from __future__ import annotations

import logging
import math

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from galmet.app.api.deps import runtime_of
from galmet.app.cone import Cone, cone_search
from galmet.app.errors import ApiError
from galmet.app.scs import CONTENT_TYPE, cone_votable, error_votable
from galmet.sky import check_dec, check_ra

router = APIRouter(tags=["cone search"])
log = logging.getLogger("galmet.api")

#: VOTable names a client may give in RESPONSEFORMAT (SCS 1.1); votable is the only format.
VOTABLE_FORMATS = {
    "votable",
    "application/x-votable+xml",
    "text/xml",
    "text/xml;content=x-votable",
    "application/x-votable+xml;serialization=tabledata",
}
_VOTABLE = {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}
_PARAMETERS = [
    {"name": "RA", "in": "query", "required": True,
     "schema": {"type": "number", "minimum": 0, "maximum": 360},
     "description": "right ascension of the cone's centre, decimal degrees (ICRS), 0..360"},
    {"name": "DEC", "in": "query", "required": True,
     "schema": {"type": "number", "minimum": -90, "maximum": 90},
     "description": "declination of the centre, decimal degrees (ICRS), -90..90"},
    {"name": "SR", "in": "query", "required": True, "schema": {"type": "number", "minimum": 0},
     "description": "search radius, degrees (0: the metadata, no rows); at most "
                    "GALMET_SCS_MAX_SR (0.1 by default), stated in every answer"},
    {"name": "VERB", "in": "query", "schema": {"type": "integer", "enum": [1, 2, 3]},
     "description": "1: fewest columns, 2 (default), 3: all"},
    {"name": "MAXREC", "in": "query", "schema": {"type": "integer", "minimum": 0},
     "description": "at most this many galaxies, the nearest (0: the metadata)"},
    {"name": "RESPONSEFORMAT", "in": "query",
     "schema": {"type": "string", "enum": sorted(VOTABLE_FORMATS)},
     "description": "votable (the only format)"},
]  # fmt: skip


@router.get(
    "/scs",
    response_class=Response,
    openapi_extra={"parameters": _PARAMETERS},
    responses={
        200: {"description": "the galaxies in the cone with their predictions", **_VOTABLE},
        **{
            status: {"description": f"{what}: an SCS error VOTable", **_VOTABLE}
            for status, what in [
                (400, "bad or missing RA, DEC or SR, or a cone over the caps"),
                (502, "SkyServer failed"),
                (503, "not ready"),
                (504, "SkyServer did not answer in time"),
            ]
        },
    },
)
async def cone_search_route(request: Request) -> Response:
    """The SDSS galaxies within SR degrees of (RA, DEC), nearest first, each with its
    predicted metallicity (from the cache, or computed), as a VOTable for TOPCAT, STILTS and
    pyvo. The caps on SR and on rows are in every answer's metadata."""
    try:
        runtime = runtime_of(request)
        settings, model = runtime.settings, runtime.model
        query = _Query.parse(request, settings.scs_max_sr)
        cap = settings.scs_max_rows
        limit = cap if query.maxrec is None else min(query.maxrec, cap)
        if query.sr == 0 or limit == 0:
            cone = Cone([], overflow=False)
        else:
            cone = await cone_search(runtime.predictions, query.ra, query.dec, query.sr, limit)
            if cone.overflow and query.maxrec is None:
                raise ApiError(
                    400,
                    f"the cone holds more than {cap} galaxies, the most one answer gives "
                    f"(GALMET_SCS_MAX_ROWS): use a smaller SR, or MAXREC for the nearest",
                )
    except ApiError as exc:
        return _error(exc.status, exc.detail)
    except Exception:  # even then a VOTable, never the service's JSON error
        log.exception("cone search failed")
        return _error(500, "internal error (logged)")
    body = await to_thread.run_sync(
        lambda: cone_votable(
            cone.galaxies,
            verb=query.verb,
            model=model,
            max_sr=settings.scs_max_sr,
            max_rows=cap,
            overflow=cone.overflow,
        )
    )
    return _votable(body)


class _Query:
    """The cone search's parameters, read and checked."""

    def __init__(self, ra: float, dec: float, sr: float, verb: int, maxrec: int | None) -> None:
        self.ra, self.dec, self.sr, self.verb, self.maxrec = ra, dec, sr, verb, maxrec

    @classmethod
    def parse(cls, request: Request, max_sr: float) -> _Query:
        """From the query string (names in any case; the first of a repeated name wins).
        Bad values raise a 400 ``ApiError`` saying which and why."""
        params: dict[str, str] = {}
        for key, value in request.query_params.multi_items():
            params.setdefault(key.upper(), value)
        ra = _number(params, "RA")
        dec = _number(params, "DEC")
        sr = _number(params, "SR")
        try:
            check_ra(0.0 if ra == 360 else ra, "RA")
            check_dec(dec, "DEC")
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if sr < 0:
            raise ApiError(400, f"SR must be 0 or more degrees, got {sr:g}")
        if sr > max_sr:
            raise ApiError(
                400, f"SR {sr:g} is above the largest this service takes, {max_sr:g} degrees"
            )
        verb = _integer(params, "VERB", 2)
        if verb not in (1, 2, 3):
            raise ApiError(400, f"VERB must be 1, 2 or 3, got {verb}")
        maxrec = _integer(params, "MAXREC", None)
        if maxrec is not None and maxrec < 0:
            raise ApiError(400, f"MAXREC must be 0 or more, got {maxrec}")
        fmt = params.get("RESPONSEFORMAT", "votable").strip().lower().replace(" ", "")
        if fmt not in VOTABLE_FORMATS:
            raise ApiError(400, f"RESPONSEFORMAT {fmt!r} is not served: only votable")
        return cls(0.0 if ra == 360 else ra, dec, sr, verb, maxrec)


def _number(params: dict[str, str], name: str) -> float:
    text = params.get(name, "").strip()
    if not text:
        raise ApiError(400, f"{name} is required (decimal degrees)")
    try:
        value = float(text)
    except ValueError:
        raise ApiError(
            400, f"{name} must be a number in decimal degrees, got {text[:40]!r}"
        ) from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be finite, got {text[:40]!r}")
    return value


def _integer(params: dict[str, str], name: str, default: int | None) -> int | None:
    text = params.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text[:40]!r}") from None


def _error(status: int, message: str) -> Response:
    return _votable(error_votable(message), status)


def _votable(body: bytes, status: int = 200) -> Response:
    # The header as SCS gives it: with media_type, Starlette would append a charset.
    return Response(body, status_code=status, headers={"Content-Type": CONTENT_TYPE})
