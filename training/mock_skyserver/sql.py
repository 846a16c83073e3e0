"""The mock SkyServer's SQL side: T-SQL run on an in-memory SQLite copy of the mock sky.

The mock population is laid out with SkyServer's table names (``PhotoObjAll``/``PhotoObj``/
``PhotoPrimary``/``Galaxy``/``Star``, ``SpecObjAll``/``SpecObj``, ``GalSpecInfo``,
``GalSpecExtra``, ``GalSpecLine``), and the T-SQL galmet's queries use is translated to SQLite
(``SELECT TOP n`` → ``LIMIT n``, ``dbo.`` dropped). Answers are written as SkyServer's CSV.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from typing import Any

import numpy as np

from galmet.training.sample import BANDS

#: Row limit of one SkyServer SQL query (``MaxRows`` of the public site).
MAX_ROWS = 500_000

# Population columns copied into each SkyServer table (SpecObj's bestObjID is objID).
_PHOTO_COLUMNS = (
    ["objID", "ra", "dec"]
    + [f"modelMag_{b}" for b in BANDS]
    + [f"modelMagErr_{b}" for b in BANDS]
    + [f"petroMag_{b}" for b in BANDS]
    + [f"petroMagErr_{b}" for b in BANDS]
    + ["petroR50_r", "petroR90_r"]
)
_SPEC_COLUMNS = ["specObjID", "bestObjID", "ra", "dec", "z", "zErr", "rChi2", "class"]
_EXTRA_COLUMNS = [
    "specObjID",
    "oh_p16",
    "oh_p50",
    "oh_p84",
    "lgm_tot_p50",
    "sfr_tot_p50",
    "bptclass",
]
_INFO_COLUMNS = ["specObjID", "ra", "dec", "z"]

# Photometric type codes of PhotoObj.type.
TYPE_GALAXY, TYPE_STAR = 3, 6


class SkySQL:
    """An in-memory, read-only SQLite copy of the mock population with SkyServer's tables."""

    def __init__(self, population: Any, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        # One connection shared by the worker threads; the lock serialises queries.
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self._load(population)
        self._conn.execute("PRAGMA query_only = ON")

    def _load(self, pop: Any) -> None:
        n = len(pop)
        cols = set(pop.colnames)

        def values(name: str) -> list[Any]:
            return _column_values(pop[name])

        if "type" in cols:
            ptype = values("type")
        else:
            # Spectroscopic stars are point sources; everything else is extended.
            ptype = [
                TYPE_STAR if str(c).strip().upper() == "STAR" else TYPE_GALAXY for c in pop["class"]
            ]
        photo = {c: values(c) for c in _PHOTO_COLUMNS} | {"type": ptype}
        spec = {c: values(c) for c in _SPEC_COLUMNS if c != "bestObjID"}
        spec["bestObjID"] = values("objID")
        spec["sciencePrimary"] = [1] * n
        extra = {c: values(c) for c in _EXTRA_COLUMNS}
        info = {c: values(c) for c in _INFO_COLUMNS} | {"reliable": [1] * n}
        line = {"specObjID": values("specObjID")}

        c = self._conn
        _create(c, "PhotoObjAll", photo, key="objID")
        _create(c, "SpecObjAll", spec, key="specObjID")
        _create(c, "GalSpecInfo", info, key="specObjID")
        _create(c, "GalSpecExtra", extra, key="specObjID")
        _create(c, "GalSpecLine", line, key="specObjID")
        c.execute("CREATE INDEX SpecObjAll_bestObjID ON SpecObjAll (bestObjID)")
        # The mock has one observation per object, so every object is primary.
        c.execute("CREATE VIEW PhotoObj AS SELECT * FROM PhotoObjAll")
        c.execute("CREATE VIEW PhotoPrimary AS SELECT * FROM PhotoObjAll")
        c.execute(f"CREATE VIEW Galaxy AS SELECT * FROM PhotoObjAll WHERE type = {TYPE_GALAXY}")
        c.execute(f"CREATE VIEW Star AS SELECT * FROM PhotoObjAll WHERE type = {TYPE_STAR}")
        c.execute("CREATE VIEW SpecObj AS SELECT * FROM SpecObjAll WHERE sciencePrimary = 1")
        c.commit()

    def query(self, tsql: str) -> tuple[list[str], list[tuple]]:
        """Run a SkyServer (T-SQL) query; return column names and at most ``max_rows`` rows.

        Raises ``sqlite3.Error`` for anything SQLite rejects.
        """
        sql = translate_tsql(tsql)
        with self._lock:
            cur = self._conn.execute(sql)
            names = [d[0] for d in cur.description or []]
            rows = cur.fetchmany(self.max_rows)
            cur.close()
        return names, rows


def _column_values(col: Any) -> list[Any]:
    """Plain Python values of a table column, masked entries as None (SQL NULL)."""
    data = np.ma.asarray(col)
    out = data.data.tolist()
    mask = np.ma.getmaskarray(data)
    if mask.any():
        out = [None if m else v for v, m in zip(out, mask.tolist(), strict=True)]
    return [v.decode() if isinstance(v, bytes) else v for v in out]


def _create(conn: sqlite3.Connection, table: str, columns: dict[str, list], key: str) -> None:
    def sqltype(name: str, sample: Any) -> str:
        if isinstance(sample, bool | int):
            return "INTEGER PRIMARY KEY" if name == key else "INTEGER"
        return "REAL" if isinstance(sample, float) else "TEXT"

    names = list(columns)
    decl = ", ".join(
        f"[{name}] {sqltype(name, next((v for v in columns[name] if v is not None), 0.0))}"
        for name in names
    )
    conn.execute(f"CREATE TABLE {table} ({decl})")
    marks = ", ".join("?" for _ in names)
    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", zip(*columns.values(), strict=True))


_TOP = re.compile(r"^\s*SELECT\s+(DISTINCT\s+|ALL\s+)?TOP\s*\(?\s*(\d+)\s*\)?\s", re.IGNORECASE)


def translate_tsql(tsql: str) -> str:
    """Translate the T-SQL bits galmet uses into SQLite: ``SELECT TOP n`` → ``LIMIT n``,
    ``dbo.`` prefixes dropped. Comments are removed first, as SkyServer does."""
    sql = re.sub(r"/\*.*?\*/", " ", tsql, flags=re.DOTALL)
    sql = re.sub(r"--[^\r\n]*", "", sql)
    sql = re.sub(r"\bdbo\.", "", sql, flags=re.IGNORECASE)
    sql = sql.strip().rstrip(";").strip()
    match = _TOP.match(sql)
    if match:
        distinct = match.group(1) or ""
        sql = f"SELECT {distinct}{sql[match.end() :]}\nLIMIT {int(match.group(2))}"
    return sql


def csv_table(names: list[str], rows: list[tuple]) -> str:
    """SkyServer's CSV: ``#Table1``, header, rows; NULL empty, comma-strings quoted."""

    def field(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return repr(v)  # shortest text that reads back to the same double
        s = str(v)
        return f'"{s}"' if isinstance(v, str) and "," in s and not s.startswith('"') else s

    lines = ["#Table1", ",".join(names)]
    lines += [",".join(field(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"
