"""The mock sky's photometric objects and SkyServer's positional search functions.

``PhotoObjAll`` holds the sample's galaxies and, around each of them, the field galaxies and
stars its cutouts show (within ``FIELD_RADIUS_DEG``; the renderer places them per sky cell, so
the same ones appear in every cutout). ``fGetNearestObjEq(ra, dec, r)`` and
``fGetNearbyObjEq(ra, dec, r)`` (r in arcminutes) are SQLite table-valued functions over those
objects, as SkyServer's are over its own: SQL such as

    SELECT v.i, n.objID, n.distance, p.petroR90_r
    FROM (VALUES (0, 150.1, 2.2)) AS v(i, ra, dec)
    CROSS APPLY dbo.fGetNearestObjEq(v.ra, v.dec, 0.05) AS n
    JOIN PhotoPrimary AS p ON p.objID = n.objID

runs for real (``CROSS APPLY`` is SQLite's join with a table-valued function). Objects away
from every sample galaxy are drawn in cutouts but not catalogued: a position there finds
nothing, as a position between SDSS's objects does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

#: Field objects are catalogued within this radius of each sample galaxy (its cutouts' reach).
FIELD_RADIUS_DEG = 1.5 / 60
#: objIDs of catalogued field objects start here (the population's are below 1.3e18).
FIELD_OBJID_BASE = 1_300_000_000_000_000_000
TYPE_GALAXY, TYPE_STAR = 3, 6
#: What the functions return, as SkyServer's do (a subset of their columns).
FUNCTION_COLUMNS = ("objID", "type", "mode", "cx", "cy", "cz", "distance")


def field_rows(sky: Any, population: Any) -> dict[str, list]:
    """PhotoObjAll columns of the field objects around ``population``'s galaxies."""
    if not hasattr(sky, "field_objects"):
        return {}
    seen: dict[tuple[float, float], tuple] = {}
    for ra, dec in zip(np.asarray(population["ra"]), np.asarray(population["dec"]), strict=True):
        for kind, f_ra, f_dec, size, _n, fluxes in sky.field_objects(
            float(ra), float(dec), FIELD_RADIUS_DEG
        ):
            seen.setdefault((round(f_ra, 8), round(f_dec, 8)), (kind, f_ra, f_dec, size, fluxes))
    rows = sorted(seen.values(), key=lambda r: (r[2], r[1]))
    out: dict[str, list] = {c: [] for c in ("objID", "type", "ra", "dec")}
    out |= {"petroMag_r": [], "petroR50_r": [], "petroR90_r": []}
    for k, (kind, f_ra, f_dec, size, fluxes) in enumerate(rows):
        r_mag = 22.5 - 2.5 * np.log10(max(fluxes["r"], 1e-6))
        psf_r90 = 1.5  # arcsec: a point source's R90 under 1.4" seeing
        out["objID"].append(FIELD_OBJID_BASE + k)
        out["type"].append(TYPE_STAR if kind == "star" else TYPE_GALAXY)
        out["ra"].append(float(f_ra))
        out["dec"].append(float(f_dec))
        out["petroMag_r"].append(float(r_mag))
        out["petroR50_r"].append(float(max(size, 0.6)))
        out["petroR90_r"].append(float(psf_r90 if kind == "star" else max(2.5 * size, psf_r90)))
    return out


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


class PositionalSearch:
    """``fGetNearbyObjEq`` / ``fGetNearestObjEq`` over objects (objID, type, ra, dec)."""

    def __init__(self, objid: list[int], otype: list[int], ra: list[float], dec: list[float]):
        self.objid = np.asarray(objid, dtype=np.int64)
        self.type = np.asarray(otype, dtype=np.int64)
        self.xyz = _unit(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        self.tree = cKDTree(self.xyz)

    def nearby(self, ra: float, dec: float, r: float) -> list[dict]:
        """Objects within ``r`` arcminutes of (ra, dec), nearest first."""
        if ra is None or dec is None or r is None or r < 0:
            return []
        centre = _unit(np.asarray(float(ra)), np.asarray(float(dec)))
        chord = 2 * np.sin(np.radians(float(r) / 60) / 2)
        found = self.tree.query_ball_point(centre, chord)
        rows = []
        for k in found:
            cos = float(np.clip(self.xyz[k] @ centre, -1.0, 1.0))
            x, y, z = (float(v) for v in self.xyz[k])
            rows.append(
                {
                    "objID": int(self.objid[k]),
                    "type": int(self.type[k]),
                    "mode": 1,  # every mock object is primary
                    "cx": x,
                    "cy": y,
                    "cz": z,
                    "distance": float(np.degrees(np.arccos(cos)) * 60),
                }
            )
        return sorted(rows, key=lambda row: row["distance"])

    def install(self, connection: Any) -> None:
        """Register both functions on an apsw connection."""
        import apsw.ext

        def fGetNearbyObjEq(ra, dec, r):  # noqa: N802  (SkyServer's name)
            yield from self.nearby(ra, dec, r)

        def fGetNearestObjEq(ra, dec, r):  # noqa: N802
            yield from self.nearby(ra, dec, r)[:1]

        for function in (fGetNearbyObjEq, fGetNearestObjEq):
            function.columns = FUNCTION_COLUMNS
            function.column_access = apsw.ext.VTColumnAccess.By_Name
            apsw.ext.make_virtual_module(connection, function.__name__, function)
