"""Predictions by sky position or uploaded image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response
from pydantic import WithJsonSchema

from galmet.app.api.deps import PredictionsDep, SettingsDep
from galmet.app.api.errors import errors
from galmet.app.errors import ApiError
from galmet.app.schemas import (
    DEC_STRING,
    DEC_TEXT,
    RA_STRING,
    RA_TEXT,
    CoordinatesIn,
    PredictionOut,
)
from galmet.app.uploads import read_capped
from galmet.images import BadImage
from galmet.sky import parse_coordinates

router = APIRouter(tags=["predict"])

BY_POSITION = errors(
    422,
    502,
    504,
    e422="a position the schema does not allow, or nothing to measure there: a blank "
    "(off-footprint) cutout, no galaxy (the flags say which)",
)
UPLOAD = errors(
    400,
    413,
    415,
    422,
    e400="a multipart body that cannot be parsed",
    e413="the upload is larger than the limit, or has too many pixels",
    e415="not a JPEG or PNG",
    e422="not a readable image, or a blank one",
)
BODY = errors(
    400, 422, 502, 504, e400="a body that is not JSON", e422=BY_POSITION[422]["description"]
)
RA_QUERY = Query(description=RA_STRING["description"], examples=["150.0"])
DEC_QUERY = Query(description=DEC_STRING["description"], examples=["2.2"])


def _position(ra: float | str, dec: float | str) -> tuple[float, float]:
    """(ra, dec) in degrees, or a 422: the schema's forms only (its patterns, checked here so
    that the one-line reason says what is wrong)."""
    try:
        position = parse_coordinates(ra, dec)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    for name, value, form in (("ra", ra, RA_TEXT), ("dec", dec, DEC_TEXT)):
        if isinstance(value, str) and not form.fullmatch(value):
            raise ApiError(
                422,
                f"{name} {value!r} is not in a documented form: decimal degrees (150.1, "
                "1e-05; not 1.5e2, no spaces around) or sexagesimal (10:00:24)",
            )
    return position


def _json(body: bytes) -> Response:
    """A cached answer kept encoded (galmet.app.hot): sent as it is, not validated and encoded
    through the response model again."""
    return Response(body, media_type="application/json")


async def _by_position(
    predictions: PredictionsDep, ra: float | str, dec: float | str
) -> PredictionOut | Response:
    """GET's and POST's answer: a hot one as it is, else the prediction (cached or not)."""
    position = _position(ra, dec)
    if (hot := predictions.hot_coordinates(*position)) is not None:
        return _json(hot)
    return await predictions.predict_coordinates(*position)


@router.get("/predict", response_model=PredictionOut, responses=BY_POSITION)
async def predict_get(
    predictions: PredictionsDep,
    ra: Annotated[str, WithJsonSchema(RA_STRING), RA_QUERY],
    dec: Annotated[str, WithJsonSchema(DEC_STRING), DEC_QUERY],
) -> PredictionOut | Response:
    """Predict the galaxy at (ra, dec): the SDSS cutout there is fetched (or cached)."""
    return await _by_position(predictions, ra, dec)


@router.post("/predict", response_model=PredictionOut, responses=BODY)
async def predict_post(
    predictions: PredictionsDep, body: CoordinatesIn
) -> PredictionOut | Response:
    """The same as GET, with a JSON body ``{"ra": …, "dec": …}``."""
    return await _by_position(predictions, body.ra, body.dec)


@router.post("/predict/image", response_model=PredictionOut, responses=UPLOAD)
async def predict_image(
    predictions: PredictionsDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(
            description="a JPEG or PNG cutout (gri colour), not empty",
            json_schema_extra={"minLength": 1},
        ),
    ],
) -> PredictionOut | Response:
    """Predict from an uploaded cutout. Grayscale/RGBA are converted and flagged; other
    sizes are resized to the model's input and flagged."""
    try:
        data = await read_capped(file, settings.max_upload_bytes)
    except BadImage as exc:
        raise ApiError(exc.status, str(exc)) from None
    if (hot := predictions.hot_upload(data)) is not None:
        return _json(hot)
    return await predictions.predict_upload(data)


@router.get(
    "/cutout",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
        **BY_POSITION,
    },
)
async def cutout(
    predictions: PredictionsDep,
    ra: Annotated[str, WithJsonSchema(RA_STRING), RA_QUERY],
    dec: Annotated[str, WithJsonSchema(DEC_STRING), DEC_QUERY],
) -> Response:
    """The SDSS cutout the model sees at (ra, dec), as JPEG (from the cache when fetched before)."""
    jpeg = await predictions.cutout_jpeg(*_position(ra, dec))
    return Response(jpeg, media_type="image/jpeg")
