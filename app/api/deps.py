"""Shared dependencies of the routes: the parts of the process's ``Runtime``.

Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per request for an attribute look-up.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from galmet.app.core.config import Settings
from galmet.app.errors import ApiError
from galmet.app.jobs.service import JobService
from galmet.app.model_info import LoadedModel
from galmet.app.predictions import Predictions
from galmet.app.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    """The process's ``Runtime``, started in the app's lifespan."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "the service is still starting")
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def get_predictions(request: Request) -> Predictions:
    return runtime_of(request).predictions


async def get_jobs(request: Request) -> JobService:
    jobs = runtime_of(request).jobs
    if jobs is None:
        raise ApiError(503, "batch jobs are not running in this process")
    return jobs


async def get_model(request: Request) -> LoadedModel:
    return runtime_of(request).model


async def get_settings(request: Request) -> Settings:
    return runtime_of(request).settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PredictionsDep = Annotated[Predictions, Depends(get_predictions)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
