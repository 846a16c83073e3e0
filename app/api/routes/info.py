"""The loaded model, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from galmet.app.api.deps import ModelDep, RuntimeDep
from galmet.app.api.errors import errors
from galmet.app.schemas import HealthOut, ModelOut, ReadyOut

router = APIRouter(tags=["service"])


@router.get("/models", response_model=ModelOut, responses=errors())
async def models(model: ModelDep) -> ModelOut:
    """The loaded model: name, version (checkpoint SHA-256), training data, test metrics."""
    return model.describe()


@router.get("/healthz", response_model=HealthOut, responses=errors())
async def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={
        **errors(),
        503: {
            "description": "not ready: the checks say which part is not (or, while the service "
            "starts, an error body)",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/ReadyOut"},
                            {"$ref": "#/components/schemas/ErrorOut"},
                        ]
                    }
                }
            },
        },
    },
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: the model is loaded and the database answers (503 otherwise)."""
    checks = await runtime.readiness()
    ready = all(v == "ok" or v.startswith("not used") for v in checks.values())
    body = ReadyOut(ready=ready, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)
