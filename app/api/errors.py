"""The error answers of the HTTP API, as the OpenAPI schema declares them.

Every error body is ``ErrorOut`` (``{"detail": "<one line>", "flags": [...]}``), whatever the
status; each route declares the statuses it can answer with ``errors(...)``, so a generated
client knows them all (FastAPI's own 422 schema, with ``detail`` a list, is never used: the
app's handler answers request validation errors with an ``ErrorOut`` too).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match

from galmet.app.schemas import ErrorOut

#: What each status means on this API (the description shown in the schema).
MEANINGS = {
    400: "unreadable input (not UTF-8, invalid JSON, a table that cannot be read)",
    404: "no such resource",
    413: "the request or upload is too large",
    415: "an unsupported media type",
    422: "invalid input, or nothing to measure there (the flags say why)",
    500: "internal error (logged)",
    502: "SkyServer failed",
    503: "not ready, or overloaded: try again after Retry-After seconds",
    504: "SkyServer did not answer in time",
}

#: Every operation can answer these: the service still starting, an unexpected error.
ALWAYS = (500, 503)


def errors(*statuses: int, **meanings: str) -> dict[int | str, dict]:
    """The ``responses=`` of a route that can answer ``statuses`` (plus ``ALWAYS``), each with
    the ``ErrorOut`` body; ``meanings`` (``e422="..."``) replace a status's description."""
    return {
        status: {
            "model": ErrorOut,
            "description": meanings.get(f"e{status}", MEANINGS[status]),
        }
        for status in sorted({*statuses, *ALWAYS})
    }


#: The methods a 405's ``Allow`` header may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods the app routes for this request's path (the ``Allow`` header of a 405):
    each one that some route, included routers too, matches fully."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]
