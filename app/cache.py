"""The result cache and the cutout cache: look-ups and idempotent writes.

Plain synchronous SQLAlchemy; the service calls these from a thread pool, one session per
call. The ``store_*`` functions commit.

Sky positions. A request within ``MATCH_ARCSEC`` (0.5″) of a cached position, same model
version and TTA level (same scale and size for cutouts), is a hit; the nearest cached row wins.
The look-up is a small box query on the stored ``ra``/``dec`` (RA wraps at 0/360; near a pole
every RA is searched) followed by an exact angular separation, so it has no cell edges.

Writes are keyed by ``sky_key(ra, dec)``: the ~0.36″ grid cell holding the position, unique
together with model version and TTA (or scale and size). Storing a result twice, from
concurrent requests or a re-run task, leaves one row: the insert is ``ON CONFLICT DO NOTHING``
and the row that owns the key is returned. Two positions in one cell are about 0.5″ apart at
most (0.7″ in the cells at a pole), so a store that finds its cell taken returns a row as good
as a hit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from galmet.app.models import Base, Cutout, Identification, Prediction
from galmet.d4 import TTA_LEVELS
from galmet.objects import SdssObject
from galmet.record import record_flags
from galmet.sky import check_position, separation_arcsec

MATCH_ARCSEC = 0.5  # a request this close to a cached position is a hit
CELL_DEG = 1e-4  # key grid: cells about 0.36″ on a side
_ROWS = round(180 / CELL_DEG)  # Dec rows of the key grid
_SHA256 = re.compile(r"[0-9a-f]{64}")

Row = TypeVar("Row", Prediction, Cutout, Identification)


def sky_key(ra: float, dec: float) -> str:
    """The grid cell holding (ra, dec), as ``"<dec row>:<ra column>"``.

    Rows are ``CELL_DEG`` high in Dec; each row is cut into as many RA columns as keep the
    cells about as wide on the sky as they are high, so cells shrink in number, not in size,
    towards the poles (three wedges share the cap at a pole). RA wraps: 360 is column 0.
    """
    check_position(ra, dec)
    row = min(int((dec + 90) / CELL_DEG), _ROWS - 1)  # Dec = +90 belongs to the last row
    dec_mid = -90 + (row + 0.5) * CELL_DEG
    columns = max(1, int(360 * math.cos(math.radians(dec_mid)) / CELL_DEG))
    column = int(ra / 360 * columns) % columns
    return f"{row}:{column}"


def find_sky(
    session: Session, ra: float, dec: float, model_version: str, tta: int
) -> Prediction | None:
    """The cached prediction nearest (ra, dec) within ``MATCH_ARCSEC``, or None."""
    rows = session.scalars(
        select(Prediction).where(
            Prediction.kind == "sky",
            Prediction.model_version == model_version,
            Prediction.tta == tta,
            *_box(Prediction, ra, dec),
        )
    ).all()
    return _nearest(rows, ra, dec)


def find_image(session: Session, sha256: str, model_version: str, tta: int) -> Prediction | None:
    """The cached prediction for the uploaded file with this SHA-256 (hex), or None."""
    key = f"img:{_check_sha256(sha256)}"
    return session.scalars(
        select(Prediction).where(
            Prediction.target_key == key,
            Prediction.model_version == model_version,
            Prediction.tta == tta,
        )
    ).one_or_none()


def store_prediction(session: Session, **item: Any) -> Prediction:
    """Cache a prediction for a sky position (``ra``, ``dec``) or an image (``image_sha256``).

    Keywords: ``model_version``, ``tta``, ``outputs``, ``sigma``, ``tta_spread``, optional
    ``flags``, ``ood_score`` and ``out_of_distribution`` (the raw record's; the flag joins
    ``flags``), and the key: ``ra`` and ``dec``, or ``image_sha256`` (``kind``, "sky" or
    "image", may be given to state which; it must agree with the key). Idempotent and safe
    under concurrency: when the key is already cached (by an earlier or a concurrent call)
    nothing is written and the cached row is returned. Commits.
    """
    return store_predictions(session, [item])[0]


def store_predictions(session: Session, items: Sequence[dict[str, Any]]) -> list[Prediction]:
    """``store_prediction`` for many at once: one INSERT, one commit; rows in ``items`` order."""
    values = [_prediction_values(**item) for item in items]
    unique = ("target_key", "model_version", "tta")
    _insert_once(session, Prediction, values, unique)
    return _rows_by_key(session, Prediction, values, unique)


def _prediction_values(
    *,
    model_version: str,
    tta: int,
    outputs: dict[str, float],
    sigma: dict[str, float],
    tta_spread: dict[str, float],
    flags: Sequence[str] = (),
    ood_score: float | None = None,
    out_of_distribution: bool = False,
    ra: float | None = None,
    dec: float | None = None,
    image_sha256: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    if tta not in TTA_LEVELS:
        raise ValueError(f"tta must be one of {TTA_LEVELS}, not {tta!r}")
    if kind not in (None, "image" if image_sha256 is not None else "sky"):
        raise ValueError(f"kind={kind!r} does not match the key given")
    if image_sha256 is None:
        if ra is None or dec is None:
            raise ValueError("give either ra and dec, or image_sha256")
        kind, target_key = "sky", f"sky:{sky_key(ra, dec)}"
    else:
        if ra is not None or dec is not None:
            raise ValueError("give either ra and dec, or image_sha256, not both")
        image_sha256 = _check_sha256(image_sha256)
        kind, target_key = "image", f"img:{image_sha256}"
    raised = {"out_of_distribution": out_of_distribution}
    return {
        "kind": kind,
        "target_key": target_key,
        "ra": ra,
        "dec": dec,
        "image_sha256": image_sha256,
        "model_version": model_version,
        "tta": tta,
        "outputs": dict(outputs),
        "sigma": dict(sigma),
        "tta_spread": dict(tta_spread),
        "flags": list(dict.fromkeys([*flags, *record_flags(raised)])),
        "ood_score": ood_score,
    }


def get_cutout(session: Session, ra: float, dec: float, scale: float, size: int) -> Cutout | None:
    """The cached cutout nearest (ra, dec) within ``MATCH_ARCSEC``, same scale and size."""
    rows = session.scalars(
        select(Cutout).where(Cutout.scale == scale, Cutout.size == size, *_box(Cutout, ra, dec))
    ).all()
    return _nearest(rows, ra, dec)


def store_cutout(
    session: Session, ra: float, dec: float, scale: float, size: int, jpeg: bytes, blank: bool
) -> Cutout:
    """Cache a fetched cutout; like ``store_prediction``, idempotent and safe under concurrency.

    Returns the cached row (an earlier one when the key was taken). Commits.
    """
    return store_cutouts(session, [(ra, dec, scale, size, jpeg, blank)])[0]


def store_cutouts(
    session: Session, items: Sequence[tuple[float, float, float, int, bytes, bool]]
) -> list[Cutout]:
    """``store_cutout`` for many ``(ra, dec, scale, size, jpeg, blank)`` at once: one INSERT,
    one commit; rows in ``items`` order."""
    values = [
        {
            "sky_key": sky_key(ra, dec),
            "ra": ra,
            "dec": dec,
            "scale": scale,
            "size": size,
            "jpeg": jpeg,
            "blank": blank,
        }
        for ra, dec, scale, size, jpeg, blank in items
    ]
    unique = ("sky_key", "scale", "size")
    _insert_once(session, Cutout, values, unique)
    return _rows_by_key(session, Cutout, values, unique)


def find_identifications(
    session: Session, positions: Sequence[tuple[float, float]], radius_arcsec: float
) -> list[SdssObject | None | Literal[False]]:
    """For each position, the SDSS object identified there before (within ``MATCH_ARCSEC``,
    same search radius): the object, None when there was none, or False when the position was
    never looked up."""
    out: list[SdssObject | None | Literal[False]] = []
    for ra, dec in positions:
        rows = session.scalars(
            select(Identification).where(
                Identification.radius_arcsec == radius_arcsec, *_box(Identification, ra, dec)
            )
        ).all()
        row = _nearest(rows, ra, dec)
        out.append(False if row is None else _object_of(row, ra, dec))
    return out


def store_identifications(
    session: Session,
    items: Sequence[tuple[float, float, SdssObject | None]],
    radius_arcsec: float,
) -> None:
    """Keep what SkyServer said about each (ra, dec): its object, or None for nothing there.
    Idempotent like the other stores; commits."""
    values = [
        {
            "sky_key": sky_key(ra, dec),
            "ra": ra,
            "dec": dec,
            "radius_arcsec": radius_arcsec,
            "obj_id": None if obj is None else obj.objID,
            "obj_type": None if obj is None else obj.type,
            "obj_ra": None if obj is None else obj.ra,
            "obj_dec": None if obj is None else obj.dec,
            "separation_arcsec": None if obj is None else obj.separation_arcsec,
            "petro_r90_r": None if obj is None else obj.petroR90_r,
            "petro_mag_r": None if obj is None else obj.petroMag_r,
        }
        for ra, dec, obj in items
    ]
    _insert_once(session, Identification, values, ("sky_key", "radius_arcsec"))


def _object_of(row: Identification, ra: float, dec: float) -> SdssObject | None:
    if row.obj_id is None:
        return None
    return SdssObject(
        objID=row.obj_id,
        type=row.obj_type,
        ra=row.obj_ra,
        dec=row.obj_dec,
        # from the position asked now, which may differ from the stored one by < 0.5″
        separation_arcsec=separation_arcsec(ra, dec, row.obj_ra, row.obj_dec),
        petroR90_r=row.petro_r90_r,
        petroMag_r=row.petro_mag_r,
    )


def _rows_by_key(
    session: Session, model: type[Row], values: list[dict[str, Any]], unique: Sequence[str]
) -> list[Row]:
    """The rows holding each of ``values``' unique keys, in order."""
    if not values:
        return []
    columns = [getattr(model, name) for name in unique]
    found: dict[tuple, Row] = {}
    for start in range(0, len(values), 500):  # keep the IN list a sane size
        part = values[start : start + 500]
        conditions = [
            column.in_({v[name] for v in part})
            for column, name in zip(columns, unique, strict=True)
        ]
        for row in session.scalars(select(model).where(*conditions)):
            found[tuple(getattr(row, name) for name in unique)] = row
    return [found[tuple(v[name] for name in unique)] for v in values]


def _check_sha256(sha256: str) -> str:
    sha256 = sha256.lower()
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


def _box(model: type[Row], ra: float, dec: float) -> list[ColumnElement[bool]]:
    """SQL conditions for an RA/Dec box around the match circle (exact test in ``_nearest``)."""
    check_position(ra, dec)
    half = 1.5 * MATCH_ARCSEC / 3600  # a margin: the box only has to contain the circle
    conditions = [model.dec.between(dec - half, dec + half)]
    top = abs(dec) + half
    if top >= 90:
        return conditions  # the box holds a pole: every RA
    half_ra = half / math.cos(math.radians(top))  # RA degrees shrink by cos(Dec)
    if half_ra >= 180:
        return conditions
    low, high = ra - half_ra, ra + half_ra
    if low < 0:  # wraps through RA 0
        conditions.append(or_(model.ra >= low + 360, model.ra <= high))
    elif high >= 360:
        conditions.append(or_(model.ra >= low, model.ra <= high - 360))
    else:
        conditions.append(model.ra.between(low, high))
    return conditions


def _nearest(rows: Sequence[Row], ra: float, dec: float) -> Row | None:
    if not rows:
        return None
    seps = separation_arcsec(ra, dec, [r.ra for r in rows], [r.dec for r in rows])
    best = int(seps.argmin())
    return rows[best] if seps[best] <= MATCH_ARCSEC else None


def _insert_once(
    session: Session, model: type[Base], values: list[dict[str, Any]], unique: Sequence[str]
) -> None:
    """INSERT … ON CONFLICT (unique) DO NOTHING for each of ``values``, then commit.

    The database settles races: a concurrent duplicate waits for the first writer (PostgreSQL)
    or for the write lock (SQLite, busy_timeout) and is then skipped, never an error.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # db.normalize_url refuses other databases before any engine exists
        raise ValueError(f"no idempotent insert for the {dialect} database")
    if values:
        statement = insert(model).on_conflict_do_nothing(index_elements=list(unique))
        session.execute(statement, values)  # executemany: batched into few round trips
    session.commit()
