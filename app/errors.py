"""Errors the API answers with: an HTTP status, a one-line reason and flags."""

from __future__ import annotations

from galmet.skyserver import SkyServerError, SkyServerTimeout


class ApiError(Exception):
    """A request that cannot be answered: HTTP status, one-line reason, flags."""

    def __init__(self, status: int, detail: str, flags: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.flags = status, detail, flags or []


def blank_cutout_error(ra: float, dec: float) -> ApiError:
    """The 422 for a position whose SDSS cutout is blank."""
    return ApiError(
        422,
        f"the SDSS cutout at RA {ra:.5f}, Dec {dec:.5f} is blank: "
        "the position is outside the SDSS imaging footprint",
        ["blank_cutout", "off_footprint"],
    )


def no_galaxy_error(ra: float, dec: float) -> ApiError:
    """The 422 where there is nothing to measure: no source in the cutout's centre and no
    SDSS object at the position."""
    return ApiError(
        422,
        f"no galaxy at this position (RA {ra:.5f}, Dec {dec:.5f}): no source at the centre of "
        "the SDSS cutout and no SDSS object within the match radius",
        ["no_galaxy", "no_object", "no_source_at_centre"],
    )


def skyserver_error(exc: SkyServerError) -> ApiError:
    """A SkyServer failure as the API reports it: 504 for a timeout, else 502."""
    if isinstance(exc, SkyServerTimeout):
        return ApiError(504, f"SkyServer did not answer in time: {exc.reason}")
    return ApiError(502, f"SkyServer failed: {exc.reason}")
