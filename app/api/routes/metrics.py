"""Prometheus metrics of this API process (see app.metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from galmet.app.api.deps import RuntimeDep
from galmet.app.api.errors import errors
from galmet.app.metrics import QUEUE_DEPTH

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors()},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Request latency, queue depth, batch sizes and images/s, in Prometheus' text format."""
    if runtime.jobs is not None:
        depth = await runtime.jobs.depth()
        if depth is not None:
            QUEUE_DEPTH.set(depth)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
