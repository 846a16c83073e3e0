"""Shared dependencies of the routes: the parts of the process's ``Runtime``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from galmet.app.core.config import Settings
from galmet.app.errors import ApiError
from galmet.app.jobs.service import JobService
from galmet.app.model_info import LoadedModel
from galmet.app.predictions import Predictions
from galmet.app.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The process's ``Runtime``, started in the app's lifespan."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "the service is still starting")
    return runtime


def get_predictions(request: Request) -> Predictions:
    return get_runtime(request).predictions


def get_jobs(request: Request) -> JobService:
    jobs = get_runtime(request).jobs
    if jobs is None:
        raise ApiError(503, "batch jobs are not running in this process")
    return jobs


def get_model(request: Request) -> LoadedModel:
    return get_runtime(request).model


def get_settings(request: Request) -> Settings:
    return get_runtime(request).settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PredictionsDep = Annotated[Predictions, Depends(get_predictions)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
