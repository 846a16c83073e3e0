"""Which SDSS object each position is, through the identification cache.

A prediction by position is about the SDSS photometric object there: the nearest primary
object within ``GALMET_MATCH_RADIUS_ARCSEC`` (3″), found with SkyServer's
``fGetNearestObjEq`` (``galmet.objects``). Its cutout is centred on the object's catalog
position, so a user 2″ off gets the same image (and, from the cache, the same answer) as one
exactly on it. What SkyServer said is cached by the position asked for; a failed look-up is
not, and the prediction goes on at the position as given, flagged ``object_unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from galmet.app import cache
from galmet.app.core.config import Settings
from galmet.app.db import Database
from galmet.objects import SdssObject, nearest_objects, object_flags
from galmet.skyserver import SkyServerClient, SkyServerError

Status = Literal["found", "none", "unknown", "off"]


@dataclass(frozen=True)
class Located:
    """A position asked for, and the SDSS object there."""

    ra: float
    dec: float
    status: Status  # found; none within the radius; unknown (the look-up failed); off
    obj: SdssObject | None = None
    reason: str | None = None  # why the look-up failed

    @property
    def centre(self) -> tuple[float, float]:
        """Where the cutout is centred: on the object when there is one."""
        return (self.obj.ra, self.obj.dec) if self.obj is not None else (self.ra, self.dec)

    @property
    def flags(self) -> list[str]:
        return object_flags(self.status, None if self.obj is None else self.obj.type)


class Identifier:
    """Identifies positions: from the cache, else in batched SQL (one query per ~60)."""

    def __init__(self, settings: Settings, db: Database, skyserver: SkyServerClient) -> None:
        self.enabled = settings.identify
        self.radius = settings.match_radius_arcsec
        self.db = db
        self.skyserver = skyserver

    def known(self, session: Session, ra: float, dec: float) -> Located | None:
        """(ra, dec) located from the cache alone, in the caller's session (the caller's
        thread); None when SkyServer has not been asked about it yet."""
        if not self.enabled:
            return Located(ra, dec, "off")
        (known,) = cache.find_identifications(session, [(ra, dec)], self.radius)
        return None if known is False else _located(ra, dec, known)

    async def locate(self, positions: Sequence[tuple[float, float]]) -> list[Located]:
        """One ``Located`` per position, in order."""
        if not self.enabled:
            return [Located(ra, dec, "off") for ra, dec in positions]
        known = await self.db.run(cache.find_identifications, positions, self.radius)
        missing = [i for i, k in enumerate(known) if k is False]
        found: dict[int, Located] = {}
        if missing:
            asked = [positions[i] for i in missing]
            try:
                objects = await nearest_objects(self.skyserver, asked, self.radius)
            except SkyServerError as exc:
                reason = f"the SDSS object look-up failed: {exc.reason}"
                for i in missing:
                    found[i] = Located(*positions[i], "unknown", reason=reason)
            else:
                items = [(ra, dec, obj) for (ra, dec), obj in zip(asked, objects, strict=True)]
                await self.db.run(cache.store_identifications, items, self.radius)
                for i, obj in zip(missing, objects, strict=True):
                    found[i] = _located(*positions[i], obj)
        return [found[i] if k is False else _located(*positions[i], k) for i, k in enumerate(known)]


def _located(ra: float, dec: float, obj: SdssObject | None) -> Located:
    return Located(ra, dec, "none" if obj is None else "found", obj)
