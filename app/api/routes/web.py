"""The web page: coordinates form and image drop zone (plain HTML, Jinja2, a little JS)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from galmet.app.api.deps import ModelDep

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[2] / "templates")


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, model: ModelDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "index.html", {"model": model.describe()})
