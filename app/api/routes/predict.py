"""Predictions by sky position or uploaded image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from galmet.app.api.deps import PredictionsDep, SettingsDep
from galmet.app.errors import ApiError
from galmet.app.schemas import CoordinatesIn, ErrorOut, PredictionOut
from galmet.app.uploads import read_capped
from galmet.images import BadImage
from galmet.sky import parse_coordinates

router = APIRouter(tags=["predict"])

ERRORS = {
    400: {"model": ErrorOut, "description": "malformed request"},
    413: {"model": ErrorOut, "description": "upload too large"},
    415: {"model": ErrorOut, "description": "not a JPEG or PNG"},
    422: {"model": ErrorOut, "description": "bad input, or a blank / off-footprint cutout"},
    502: {"model": ErrorOut, "description": "SkyServer failed"},
    503: {"model": ErrorOut, "description": "not ready"},
    504: {"model": ErrorOut, "description": "SkyServer did not answer in time"},
}


def _position(ra: float | str, dec: float | str) -> tuple[float, float]:
    try:
        return parse_coordinates(ra, dec)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


@router.get("/predict", response_model=PredictionOut, responses=ERRORS)
async def predict_get(
    predictions: PredictionsDep,
    ra: Annotated[str, Query(description="degrees, or hh:mm:ss", examples=["150.0"])],
    dec: Annotated[str, Query(description="degrees, or dd:mm:ss", examples=["2.2"])],
) -> PredictionOut:
    """Predict the galaxy at (ra, dec): the SDSS cutout there is fetched (or cached)."""
    return await predictions.predict_coordinates(*_position(ra, dec))


@router.post("/predict", response_model=PredictionOut, responses=ERRORS)
async def predict_post(predictions: PredictionsDep, body: CoordinatesIn) -> PredictionOut:
    """The same as GET, with a JSON body ``{"ra": …, "dec": …}``."""
    return await predictions.predict_coordinates(*_position(body.ra, body.dec))


@router.post("/predict/image", response_model=PredictionOut, responses=ERRORS)
async def predict_image(
    predictions: PredictionsDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a JPEG or PNG cutout (gri colour)")],
) -> PredictionOut:
    """Predict from an uploaded cutout. Grayscale/RGBA are converted and flagged; other
    sizes are resized to the model's input and flagged."""
    try:
        data = await read_capped(file, settings.max_upload_bytes)
    except BadImage as exc:
        raise ApiError(exc.status, str(exc)) from None
    return await predictions.predict_upload(data)


@router.get(
    "/cutout", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, **ERRORS}
)
async def cutout(
    predictions: PredictionsDep,
    ra: Annotated[str, Query(description="degrees, or hh:mm:ss")],
    dec: Annotated[str, Query(description="degrees, or dd:mm:ss")],
) -> Response:
    """The SDSS cutout the model sees at (ra, dec), as JPEG (from the cache when fetched before)."""
    jpeg = await predictions.cutout_jpeg(*_position(ra, dec))
    return Response(jpeg, media_type="image/jpeg")
