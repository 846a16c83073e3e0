"""Request latency for ``/metrics``, as a pure ASGI middleware.

Measured: Starlette's function-style HTTP middleware (``@app.middleware("http")``, a
``BaseHTTPMiddleware``) runs the rest of the app in a task of its own with memory streams
between them, which cost a cached answer about a tenth of its time. This wraps ``send``
instead: the status is read from the response start, the time taken when the app returns.
"""

from __future__ import annotations

import time

from galmet.app.metrics import REQUEST_SECONDS


class TimingMiddleware:
    """Observe each HTTP request's seconds by method, route template and status."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an app that raises: the server error handler answers 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:  # the router wrote the matched route into this same scope dict
            seconds = time.perf_counter() - started
            REQUEST_SECONDS.labels(scope["method"], route_template(scope), str(status)).observe(
                seconds
            )


def route_template(scope) -> str:
    """The matched route as a template (``/api/v1/jobs/{job_id}``), so that metrics have one
    series per route, not one per job id; ``unmatched`` for a 404 without a route."""
    route = scope.get("route")
    path_format = getattr(route, "path_format", None)
    if path_format is None:
        return "unmatched"
    path = scope["path"]
    try:  # a router's routes keep their own paths: put the prefix back in front
        tail = path_format.format(**scope.get("path_params", {}))
    except (KeyError, IndexError, ValueError):
        return path_format
    return path[: len(path) - len(tail)] + path_format if path.endswith(tail) else path_format
