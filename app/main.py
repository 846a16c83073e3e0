"""The FastAPI application: one ``Runtime`` per process, thin routes, one-line errors."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from galmet.app.api.errors import allowed_methods
from galmet.app.api.routes import info, jobs, metrics, predict, scs, web
from galmet.app.core.config import Settings, get_settings
from galmet.app.docs_pages import add_docs_pages
from galmet.app.errors import ApiError
from galmet.app.runtime import Runtime
from galmet.app.timing import TimingMiddleware
from galmet.engine import EngineBusy

log = logging.getLogger("galmet.api")
API = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; the model, database and clients are set up in its lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.aclose()
            # The app object may outlive its server (a test harness, an ASGI host keeping a
            # reference): the model, engine and pools must not.
            app.state.runtime = None

    app = FastAPI(
        title="galmet",
        version="0.1.0",
        summary="Gas-phase metallicity of galaxies from SDSS gri images (Wu & Boada 2019).",
        description=(
            "Predict 12+log(O/H) (and stellar mass, for models that learned it) of a galaxy "
            "from its SDSS cutout, by sky position or uploaded image. Every result is cached."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by add_docs_pages, without a CDN
        redoc_url=None,
    )
    add_docs_pages(app)
    app.include_router(predict.router, prefix=API)
    app.include_router(jobs.router, prefix=API)
    app.include_router(info.router, prefix=API)
    app.include_router(scs.router, prefix=API)
    app.include_router(scs.router)  # /scs: the short URL for TOPCAT and pyvo
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    app.add_middleware(TimingMiddleware)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "flags": exc.flags}, status_code=exc.status)

    @app.exception_handler(EngineBusy)
    async def busy(request: Request, exc: EngineBusy) -> JSONResponse:
        retry = str(max(1, round(exc.retry_after)))
        return JSONResponse(
            {"detail": str(exc), "flags": ["overloaded"]}, 503, {"Retry-After": retry}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return JSONResponse({"detail": f"{where}: {first['msg']}", "flags": []}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: a 405 says what is allowed, for the whole path
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse({"detail": str(exc.detail), "flags": []}, exc.status_code, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": "internal error (logged)", "flags": []}, 500)

    return app
