"""The SDSS galaxies in a cone, each with its prediction: the work behind the cone search.

The galaxies are SkyServer's: ``dbo.fGetNearbyObjEq(ra, dec, r_arcmin)`` (primary objects
within the radius) joined to ``PhotoPrimary``, type 3 only, nearest first, one row more than
asked for so that a cone holding more is known. Each galaxy is then predicted as a single
prediction by its position is (``Predictions.predict_coordinates``): through the result
cache, the cutout cache and the micro-batching engine, so a galaxy asked for before costs
nothing and the galaxies of one cone share batched forward passes. Each galaxy's own
identification is stored first (it is the nearest object at its own position), so the
predictions ask SkyServer no more SQL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from galmet.app import cache
from galmet.app.errors import ApiError, skyserver_error
from galmet.app.predictions import Predictions
from galmet.app.schemas import PredictionOut
from galmet.objects import GALAXY, SdssObject
from galmet.skyserver import SkyServerClient, SkyServerError


@dataclass(frozen=True)
class ConeGalaxy:
    """A galaxy of the cone: the SDSS object (``separation_arcsec`` from the cone's centre)
    and its prediction, or the one-line reason there is none."""

    obj: SdssObject
    prediction: PredictionOut | None
    reason: str | None = None


@dataclass(frozen=True)
class Cone:
    """The answer to one cone: its galaxies, nearest first, and whether the cone held more
    than were taken."""

    galaxies: list[ConeGalaxy]
    overflow: bool


def cone_query(ra: float, dec: float, sr_deg: float, top: int) -> str:
    """The SkyServer SQL for the ``top`` nearest galaxies within ``sr_deg`` of (ra, dec)."""
    return (
        f"SELECT TOP {int(top)} n.objID AS objID, n.type AS type, n.distance AS distance, "
        "p.ra AS ra, p.dec AS dec, p.petroR90_r AS petroR90_r, p.petroMag_r AS petroMag_r "
        f"FROM dbo.fGetNearbyObjEq({ra:.8f}, {dec:.8f}, {sr_deg * 60:.8g}) AS n "
        f"JOIN PhotoPrimary AS p ON p.objID = n.objID WHERE n.type = {GALAXY} "
        "ORDER BY n.distance, n.objID"
    )


async def galaxies_in_cone(
    skyserver: SkyServerClient, ra: float, dec: float, sr_deg: float, limit: int
) -> tuple[list[SdssObject], bool]:
    """The ``limit`` nearest SDSS galaxies within ``sr_deg`` of (ra, dec), and whether the
    cone holds more. SkyServer failures raise its ``SkyServerError``."""
    table = await skyserver.sql(cone_query(ra, dec, sr_deg, limit + 1))
    found = [SdssObject.from_row(row) for row in table]
    found.sort(key=lambda o: (o.separation_arcsec, o.objID))
    return found[:limit], len(found) > limit


async def cone_search(
    predictions: Predictions, ra: float, dec: float, sr_deg: float, limit: int
) -> Cone:
    """The galaxies within ``sr_deg`` of (ra, dec), at most ``limit``, each predicted (see the
    module). A failed SkyServer search is an ``ApiError`` (502/504); a galaxy that cannot be
    predicted (a blank cutout, a failed fetch) keeps its row with the reason."""
    try:
        objects, overflow = await galaxies_in_cone(predictions.skyserver, ra, dec, sr_deg, limit)
    except SkyServerError as exc:
        raise skyserver_error(exc) from None
    if objects and predictions.settings.identify:
        itself = [(o.ra, o.dec, replace(o, separation_arcsec=0.0)) for o in objects]
        radius = predictions.settings.match_radius_arcsec
        await predictions.db.run(cache.store_identifications, itself, radius)
    answers = await asyncio.gather(
        *(predictions.predict_coordinates(o.ra, o.dec) for o in objects), return_exceptions=True
    )
    galaxies = []
    for obj, answer in zip(objects, answers, strict=True):
        if isinstance(answer, ApiError):
            galaxies.append(ConeGalaxy(obj, None, f"{answer.status}: {answer.detail}"))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            galaxies.append(ConeGalaxy(obj, answer))
    return Cone(galaxies, overflow)
