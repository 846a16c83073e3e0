"""Batch jobs: submit a target list, follow its progress, fetch its results."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from galmet.app.api.deps import JobsDep, SettingsDep
from galmet.app.api.errors import errors
from galmet.app.errors import ApiError
from galmet.app.results import results_csv, results_json, results_meta
from galmet.app.results_tables import results_fits, results_votable
from galmet.app.schemas import JobOut, TargetIn

router = APIRouter(tags=["jobs"])

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "items": TargetIn.model_json_schema(),
                "minItems": 1,
                "description": "the targets, at least one. Rows are checked one by one: a row "
                "that is not a valid target does not fail the job, it is kept and reported "
                "invalid, with its reason, in the results",
            },
            "example": [{"ra": 150.1, "dec": 2.2, "id": "a"}, {"ra": "10:00:24", "dec": "+02:12"}],
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary", "minLength": 1}},
                "required": ["file"],
            },
            "encoding": {"file": {"contentType": "text/csv, application/x-votable+xml"}},
        },
        "text/csv": {
            "schema": {"type": "string", "minLength": 1},
            "example": "id,ra,dec\na,150.1,2.2\n",
        },
    },
}


def _links(request: Request, job_id: str) -> dict[str, str]:
    base = str(request.url_for("job_status", job_id=job_id))
    return {"self": base, "results": f"{base}/results"}


def _check_id(job_id: str) -> str:
    if not _UUID.fullmatch(job_id.lower()):
        raise ApiError(404, f"no job {job_id!r}: job ids are UUIDs")
    return job_id.lower()


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    openapi_extra={"requestBody": _SUBMIT_BODY},
    responses=errors(
        400,
        413,
        415,
        422,
        e400="unreadable file: not UTF-8, invalid JSON, a table that cannot be read",
        e413="too many targets, or file too large",
        e415="not JSON, CSV, VOTable or FITS",
        e422="no targets, or no ra/dec columns",
        e503="not ready, or the broker did not answer",
    ),
)
async def submit_job(request: Request, jobs: JobsDep, settings: SettingsDep) -> JSONResponse:
    """Submit targets as a JSON list, a CSV, VOTable or FITS file upload (form field ``file``),
    or a CSV body. Columns ``ra``, ``dec`` and optionally ``id``. Every row is kept: bad rows are
    reported in the results, the others predicted. Returns 202 with the job's status."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "the form needs a file field named 'file'")
        if upload.size is not None and upload.size > settings.max_job_bytes:
            raise ApiError(413, f"the file is larger than {settings.max_job_bytes} bytes")
        status = await jobs.create_job(
            upload.file, filename=upload.filename, content_type=upload.content_type
        )
    else:
        body = await _read_capped(request, settings.max_job_bytes)
        status = await jobs.create_job(io.BytesIO(body), filename=None, content_type=kind)
    status["links"] = _links(request, status["id"])
    return JSONResponse(
        JobOut(**status).model_dump(mode="json"),
        status_code=202,
        headers={"Location": status["links"]["self"]},
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    name="job_status",
    responses=errors(404, 422, e404="no such job", e422="a malformed request"),
)
async def job_status(job_id: str, request: Request, jobs: JobsDep) -> JobOut:
    """Status, counts (queued, done, failed, invalid) and progress of a job."""
    status = await jobs.job_status(_check_id(job_id))
    return JobOut(**status, links=_links(request, status["id"]))


@router.get(
    "/jobs/{job_id}/results",
    responses={
        200: {
            "description": "one row per input row: a prediction or the reason there is none",
            "content": {
                "text/csv": {},
                "application/x-votable+xml": {},
                "application/fits": {},
            },
        },
        **errors(404, 422, e404="no such job", e422="an unknown format"),
    },
)
async def job_results(
    job_id: str,
    jobs: JobsDep,
    format: Literal["json", "csv", "votable", "fits"] = Query(
        "json", description="json, csv, votable or fits (a binary table)"
    ),
) -> Response:
    """Every input row, in input order: the input's columns as given, then the prediction or
    the reason there is none (unanswered rows of a running job show ``queued``), with the
    model version, TTA and the model's notice."""
    job_id = _check_id(job_id)
    status, rows = await jobs.job_results(job_id)
    name = f"galmet-{job_id}"
    meta = results_meta(status)
    columns = status["input_columns"]
    if format == "csv":
        return StreamingResponse(
            _grouped(results_csv(rows, meta, columns)),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if format in ("votable", "fits"):
        writer, media, ext = (
            (results_votable, "application/x-votable+xml", "vot")
            if format == "votable"
            else (results_fits, "application/fits", "fits")
        )
        # astropy's writers take seconds for a large job: off the event loop.
        return Response(
            await to_thread.run_sync(writer, rows, meta, columns),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}.{ext}"'},
        )
    return StreamingResponse(
        _grouped(results_json(rows, meta, columns)), media_type="application/json"
    )


def _grouped(lines: Iterator[str], size: int = 500) -> Iterator[str]:
    """Lines joined in groups: a streamed response hops threads once per item, not per row."""
    group: list[str] = []
    for line in lines:
        group.append(line)
        if len(group) >= size:
            yield "".join(group)
            group = []
    if group:
        yield "".join(group)


async def _read_capped(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
    return bytes(data)
