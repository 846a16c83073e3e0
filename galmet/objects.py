"""Which SDSS object a position is: SkyServer's ``dbo.fGetNearestObjEq``, many at a time.

For each position, the nearest primary photometric object within a radius (the service's
``GALMET_MATCH_RADIUS_ARCSEC``, 3″ by default), as SkyServer finds it: the table-valued
function ``dbo.fGetNearestObjEq(ra, dec, r_arcmin)`` joined to ``PhotoPrimary`` for its
position, size and brightness. Positions travel as a ``VALUES`` list under ``CROSS APPLY``,
as many as keep the query under ``MAX_QUERY_CHARS``: a 1,000-target job costs ~17 queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from galmet.sky import check_position
from galmet.skyserver import SkyServerClient

#: SkyServer's photometric types (PhotoObj.type).
TYPES = {0: "unknown", 1: "cosmic_ray", 3: "galaxy", 4: "ghost", 5: "known_object", 6: "star",
         7: "trail", 8: "sky"}  # fmt: skip
GALAXY = 3
#: SQL text per query at most: SkyServer takes the query in the URL.
MAX_QUERY_CHARS = 2000
DEFAULT_RADIUS_ARCSEC = 3.0

_HEAD = (
    "SELECT v.i AS i, n.objID AS objID, n.type AS type, p.ra AS ra, p.dec AS dec, "
    "n.distance AS distance, p.petroR90_r AS petroR90_r, p.petroMag_r AS petroMag_r "
    "FROM (VALUES "
)
_TAIL = (
    ") AS v(i, ra, dec) CROSS APPLY dbo.fGetNearestObjEq(v.ra, v.dec, {radius}) AS n "
    "JOIN PhotoPrimary AS p ON p.objID = n.objID"
)


@dataclass(frozen=True)
class SdssObject:
    """The SDSS photometric object at a position."""

    objID: int  # noqa: N815  (SkyServer's name)
    type: int
    ra: float
    dec: float
    separation_arcsec: float  # from the position asked for
    petroR90_r: float | None  # noqa: N815
    petroMag_r: float | None  # noqa: N815

    @classmethod
    def from_row(cls, row) -> SdssObject:
        """From a SqlSearch row of ``fGetNearestObjEq`` / ``fGetNearbyObjEq`` joined to
        PhotoPrimary (``distance`` in arcminutes)."""
        return cls(
            objID=int(row["objID"]),
            type=int(row["type"]),
            ra=float(row["ra"]),
            dec=float(row["dec"]),
            separation_arcsec=float(row["distance"]) * 60.0,
            petroR90_r=_number(row["petroR90_r"]),
            petroMag_r=_number(row["petroMag_r"]),
        )

    @property
    def type_name(self) -> str:
        return TYPES.get(self.type, "unknown")

    @property
    def is_galaxy(self) -> bool:
        return self.type == GALAXY

    def as_dict(self) -> dict:
        return asdict(self) | {"type_name": self.type_name}


def _row(i: int, ra: float, dec: float) -> str:
    return f"({i},{ra:.7f},{dec:.7f})"


def nearest_queries(
    positions: Sequence[tuple[float, float]], radius_arcsec: float = DEFAULT_RADIUS_ARCSEC
) -> list[tuple[list[int], str]]:
    """The SQL to identify ``positions``: (indices of the positions, query) pairs, each query
    at most ``MAX_QUERY_CHARS`` long."""
    tail = _TAIL.format(radius=f"{radius_arcsec / 60:.6g}")
    budget = MAX_QUERY_CHARS - len(_HEAD) - len(tail)
    queries: list[tuple[list[int], str]] = []
    members: list[int] = []
    rows: list[str] = []
    used = 0
    for i, (ra, dec) in enumerate(positions):
        check_position(ra, dec)
        row = _row(len(members), ra, dec)
        if members and used + len(row) + 1 > budget:
            queries.append((members, _HEAD + ",".join(rows) + tail))
            members, rows, used = [], [], 0
            row = _row(0, ra, dec)
        members.append(i)
        rows.append(row)
        used += len(row) + 1
    if members:
        queries.append((members, _HEAD + ",".join(rows) + tail))
    return queries


def _number(value) -> float | None:
    if np.ma.is_masked(value):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


async def nearest_objects(
    client: SkyServerClient,
    positions: Sequence[tuple[float, float]],
    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
) -> list[SdssObject | None]:
    """The nearest primary object within ``radius_arcsec`` of each position (None where there
    is none), in as few SQL queries as the URL allows. SkyServer failures raise its
    ``SkyServerError`` (the caller decides what an unknown object means)."""
    found: list[SdssObject | None] = [None] * len(positions)
    for members, query in nearest_queries(positions, radius_arcsec):
        table = await client.sql(query)
        for row in table:
            k = int(row["i"])
            if not 0 <= k < len(members):
                continue
            obj = SdssObject.from_row(row)
            current = found[members[k]]
            if current is None or obj.separation_arcsec < current.separation_arcsec:
                found[members[k]] = obj
    return found


def object_flags(status: str | None, obj_type: int | None) -> list[str]:
    """The quality flags of an identification: ``no_object`` (nothing within the radius),
    ``object_unknown`` (the look-up failed), ``not_a_galaxy`` (a star or other type)."""
    if status == "none":
        return ["no_object"]
    if status == "unknown":
        return ["object_unknown"]
    if status == "found" and obj_type != GALAXY:
        return ["not_a_galaxy"]
    return []
