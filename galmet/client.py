"""A Python client of a galmet service: predictions by position or image, and whole tables.

::

    from galmet.client import Client

    with Client("http://127.0.0.1:8000") as galmet:
        galmet.predict(150.1, 2.2)["oh_p50"]           # degrees, "10:00:24" strings, a SkyCoord
        galmet.predict_image("cutout.jpg")             # a path or the bytes of a JPEG/PNG
        galmet.model()["version"]
        table = galmet.predict_table("targets.fits")   # an astropy Table, or a file astropy reads

``predict_table`` sends the table as one batch job, shows a progress bar while the service
works, and returns the same table with the prediction columns added (with units; masked
where a row has no prediction, and a ``reason`` column saying why). An error the service
answers is a ``GalmetServerError`` carrying its one-line detail; so is a service that cannot
be reached.

The client speaks only HTTP (httpx): it imports nothing of the service and runs anywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from galmet.errors import GalmetError

if TYPE_CHECKING:
    from astropy.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"
#: Results formats of a job, and the file extension of each.
FORMATS = {"csv": ".csv", "json": ".json", "votable": ".vot", "fits": ".fits"}
#: Prediction columns ``predict_table`` adds: name -> unit (None: none).
PREDICTION_COLUMNS = {
    "status": None,
    "objID": None,
    "separation_arcsec": "arcsec",
    "oh_p50": "dex",
    "oh_sigma": "dex",
    "oh_p16": "dex",
    "oh_p84": "dex",
    "log_mstar": "dex",
    "log_mstar_sigma": "dex",
    "oh_tta_spread": "dex",
    "cached": None,
    "flags": None,
    "reason": None,
}
#: Added to a prediction column's name where the table has a column of that name already
#: (a catalog's own ``oh_p50``, say).
SUFFIX = "_galmet"
_MASS = ("log_mstar", "log_mstar_sigma")


class GalmetServerError(GalmetError):
    """The service answered with an error (``status``, its one-line ``detail`` and
    ``flags``), or could not be reached (``status`` None)."""

    def __init__(self, status: int | None, detail: str, flags: list[str] | None = None) -> None:
        self.status, self.detail, self.flags = status, detail, list(flags or [])
        where = "" if status is None else f"the service answered {status}: "
        super().__init__(where + detail)


class Client:
    """A galmet service at ``base_url`` (e.g. ``http://127.0.0.1:8000``). ``timeout`` is
    per HTTP request, in seconds; ``transport`` lets tests plug in an httpx transport."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1/", timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ------------------------------------------------------------------ single predictions
    def predict(self, ra: Any, dec: Any = None) -> dict:
        """The prediction for the galaxy at (ra, dec): decimal degrees, sexagesimal strings
        (RA in hours), or one ``SkyCoord`` as ``ra``. Returns the service's JSON (``oh_p50``,
        ``oh_sigma``, ``flags``, ``object`` …)."""
        if dec is None:
            ra, dec = _skycoord_degrees(ra)
        return self._call("GET", "predict", params={"ra": str(ra), "dec": str(dec)})

    def predict_image(self, image: str | Path | bytes) -> dict:
        """The prediction for an SDSS-like gri cutout: a JPEG/PNG file's path, or its bytes."""
        if isinstance(image, bytes):
            name, data = "image", image
        else:
            path = Path(image)
            try:
                name, data = path.name, path.read_bytes()
            except OSError as exc:
                raise GalmetError(f"{path}: {exc.strerror or exc}") from None
        return self._call("POST", "predict/image", files={"file": (name, data)})

    def model(self) -> dict:
        """The service's model: name, version, outputs, test metrics."""
        return self._call("GET", "models")

    # ------------------------------------------------------------------ batch jobs
    def submit(self, targets: list[dict] | str | Path) -> dict:
        """Submit a batch job: a list of ``{"ra", "dec", "id"}`` dicts, or a target file (CSV,
        JSON or VOTable) uploaded as it is. Returns the job's status (``id``, ``n_targets``,
        ``counts`` …)."""
        if isinstance(targets, list):
            return self._call("POST", "jobs", json=targets)
        path = Path(targets)
        if not path.is_file():
            raise GalmetError(f"{path}: no such file")
        with path.open("rb") as fh:
            return self._call("POST", "jobs", files={"file": (path.name, fh)})

    def job(self, job_id: str) -> dict:
        """A job's status and counts."""
        return self._call("GET", f"jobs/{job_id}")

    def wait(
        self,
        job: dict,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> dict:
        """Poll ``job`` (a status from ``submit``) until it is done, with a tqdm progress bar
        over its rows; returns the final status. A job still running after ``timeout``
        seconds is a ``GalmetError`` (it keeps running on the server)."""
        from tqdm import tqdm

        started = time.monotonic()
        with tqdm(
            total=job["n_targets"], unit="target", desc="galmet job", disable=not progress
        ) as bar:
            while True:
                c = job["counts"]
                bar.n = job["n_targets"] - c["queued"]
                bar.set_postfix(failed=c["failed"], invalid=c["invalid"], refresh=False)
                bar.refresh()
                if job["status"] == "done":
                    return job
                if timeout is not None and time.monotonic() - started > timeout:
                    raise GalmetError(
                        f"job {job['id']} not done after {timeout:g} s; it keeps running on "
                        f"the server: {self.base_url}/api/v1/jobs/{job['id']}"
                    )
                time.sleep(poll)
                job = self.job(job["id"])

    def results(self, job_id: str, format: str = "json") -> bytes:
        """A job's results as the service writes them: ``json``, ``csv``, ``votable`` or
        ``fits``."""
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        return self._send("GET", f"jobs/{job_id}/results", params={"format": format}).content

    def predict_table(
        self,
        table: Table | str | Path,
        ra: str = "ra",
        dec: str = "dec",
        id: str | None = None,  # noqa: A002  (the service's name for it)
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        progress: bool = True,
    ) -> Table:
        """Predict every row of ``table`` (an astropy ``Table``, or a file astropy reads:
        CSV, FITS, VOTable …) as one batch job, and return a copy of it with the prediction
        columns added (``PREDICTION_COLUMNS``; the mass columns where the model predicts
        mass). Positions are read from the ``ra`` and ``dec`` columns: numbers in degrees,
        columns with angular units, or sexagesimal strings (RA in hours); ``id`` names a
        column sent along as the target's id. Rows without a prediction are masked, with
        ``status`` and ``reason`` saying why. Columns whose names the table has already get
        the suffix ``_galmet``."""
        from astropy.table import Table

        if not isinstance(table, Table):
            table = _read_table(Path(table))
        for name in (ra, dec, id):
            if name is not None and name not in table.colnames:
                shown = ", ".join(table.colnames[:20])
                raise GalmetError(f"the table has no column {name!r} (it has: {shown})")
        if len(table) == 0:
            raise GalmetError("the table has no rows")
        targets = _targets(table, ra, dec, id)
        job = self.wait(self.submit(targets), poll=poll, timeout=timeout, progress=progress)
        rows = self._call("GET", f"jobs/{job['id']}/results", params={"format": "json"})
        return _with_predictions(table, rows)

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GalmetServerError(
                None, f"cannot reach the galmet service at {self.base_url}: {exc}"
            ) from None
        if response.is_success:
            return response
        try:
            body = response.json()
            detail, flags = str(body.get("detail", "")), body.get("flags") or []
        except (ValueError, AttributeError):
            detail, flags = " ".join(response.text.split())[:200], []
        raise GalmetServerError(response.status_code, detail or response.reason_phrase, flags)


def _skycoord_degrees(coord: Any) -> tuple[float, float]:
    """(ra, dec) in ICRS degrees of a ``SkyCoord``; a clear error for anything else."""
    icrs = getattr(coord, "icrs", None)
    if icrs is None or not coord.isscalar:
        raise TypeError("give ra and dec, or one scalar SkyCoord")
    return float(icrs.ra.deg), float(icrs.dec.deg)


def _read_table(path: Path) -> Table:
    """A table from a file astropy reads (format guessed from the name and content)."""
    from astropy.table import Table

    if not path.is_file():
        raise GalmetError(f"{path}: no such file")
    try:
        return Table.read(path, format="ascii.csv" if path.suffix.lower() == ".csv" else None)
    except Exception as exc:  # astropy raises many types for an unreadable file
        reason = " ".join(str(exc).split())[:200]
        raise GalmetError(f"{path}: astropy cannot read it as a table: {reason}") from None


def _targets(table: Table, ra: str, dec: str, id: str | None) -> list[dict]:  # noqa: A002
    """The job's targets: one dict per row, in order; a masked or non-finite position is
    sent as null (the service reports that row invalid and runs the others)."""
    ras, decs = _positions(table[ra], "ra"), _positions(table[dec], "dec")
    ids = None if id is None else [None if _missing(v) else str(v) for v in table[id]]
    return [
        {"ra": r, "dec": d, **({} if ids is None else {"id": ids[i]})}
        for i, (r, d) in enumerate(zip(ras, decs, strict=True))
    ]


def _positions(column: Any, name: str) -> list[float | str | None]:
    """A position column's values for JSON: degrees (converted from its unit when it has
    one), or the strings as they are."""
    from astropy import units as u

    unit = getattr(column, "unit", None)
    values: list[Any] = list(column)
    if unit is not None and column.dtype.kind in "fiu":
        try:
            factor = (1 * unit).to_value(u.deg)
        except u.UnitConversionError:
            raise GalmetError(f"the {name} column's unit {unit} is not an angle") from None
        values = [v if _missing(v) else float(v) * factor for v in values]
    out: list[float | str | None] = []
    for v in values:
        if _missing(v):
            out.append(None)
        elif isinstance(v, str | bytes):
            out.append(v.decode() if isinstance(v, bytes) else v)
        else:
            out.append(float(v))
    return out


def _missing(value: Any) -> bool:
    import numpy as np

    if value is None or value is np.ma.masked:
        return True
    return isinstance(value, float | np.floating) and not math.isfinite(value)


def _with_predictions(table: Table, rows: list[dict]) -> Table:
    """A copy of ``table`` with the prediction columns of the job's ``rows`` (one per input
    row, in order, numbered from 1)."""
    from astropy import units as u
    from astropy.table import MaskedColumn

    out = table.copy(copy_data=True)
    by_row = {int(r["row"]): r for r in rows}
    ordered = [by_row.get(i + 1, {}) for i in range(len(table))]
    mass = any(r.get("log_mstar") is not None for r in ordered)
    for name, unit in PREDICTION_COLUMNS.items():
        if name in _MASS and not mass:
            continue
        values = [r.get(name) for r in ordered]
        if name == "flags":
            values = [";".join(v) if v is not None else None for v in values]
        column = _masked(values, name, MaskedColumn)
        if unit is not None:
            column.unit = u.Unit(unit)
        out[name + SUFFIX if name in table.colnames else name] = column
    return out


def _masked(values: list[Any], name: str, column_class: Callable) -> Any:
    import numpy as np

    mask = [v is None for v in values]
    if name in ("status", "flags", "reason"):
        data: Any = np.array(["" if v is None else str(v) for v in values], dtype=str)
        if name != "reason":
            mask = [False] * len(values)  # every row has a status; "" is no flags
    elif name == "objID":
        data = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
    elif name == "cached":
        data = np.array([bool(v) for v in values], dtype=bool)
    else:
        data = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    return column_class(data, name=name, mask=mask)
