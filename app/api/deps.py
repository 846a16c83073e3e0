"""Shared dependencies of the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from galmet.app.service import Service


def get_service(request: Request) -> Service:
    """The process's ``Service``, started in the app's lifespan."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
