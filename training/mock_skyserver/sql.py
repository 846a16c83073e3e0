"""The mock SkyServer's SQL side: T-SQL run on an in-memory SQLite copy of the mock sky.

The mock population is laid out with SkyServer's table names (``PhotoObjAll``/``PhotoObj``/
``PhotoPrimary``/``Galaxy``/``Star``, ``SpecObjAll``/``SpecObj``, ``GalSpecInfo``,
``GalSpecExtra``, ``GalSpecLine``), and the T-SQL galmet's queries use is translated to SQLite
(``SELECT TOP n`` → ``LIMIT n``, ``dbo.`` dropped, ``CROSS APPLY`` → SQLite's join with a
table-valued function, ``(VALUES …) AS v(a, b)`` → a sub-select naming the columns). The
positional functions are ``objects.py``'s. Answers are written as SkyServer's CSV.

The engine is SQLite through apsw, which (unlike the standard library's sqlite3) lets Python
define table-valued functions, the kind ``fGetNearestObjEq`` is.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

import apsw
import numpy as np

from galmet.training.mock_skyserver.objects import (
    TYPE_GALAXY,
    TYPE_STAR,
    PositionalSearch,
)
from galmet.training.sample import BANDS

#: What the SQL engine raises for a query it rejects.
SQLError = apsw.Error

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


class SkySQL:
    """An in-memory, read-only SQLite copy of the mock population with SkyServer's tables.

    ``field`` adds catalogued field objects to ``PhotoObjAll`` (``objects.field_rows``).
    ``duplicate_every`` gives every k-th galaxy a second science-primary spectrum (a worse
    redshift, its own MPA-JHU rows), as SDSS has for galaxies observed twice.
    """

    def __init__(
        self,
        population: Any,
        max_rows: int = MAX_ROWS,
        field: dict[str, list] | None = None,
        duplicate_every: int = 0,
    ) -> None:
        self.max_rows = max_rows
        # One connection shared by the worker threads; the lock serialises queries.
        self._conn = apsw.Connection(":memory:")
        self._lock = threading.Lock()
        self._load(population, field or {}, duplicate_every)
        self._conn.execute("PRAGMA query_only = ON")

    def _load(self, pop: Any, field: dict[str, list], duplicate_every: int) -> None:
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
        for name in photo:  # the field objects, with what they have (NULL elsewhere)
            photo[name] = photo[name] + field.get(name, [None] * len(field.get("objID", [])))
        spec = {c: values(c) for c in _SPEC_COLUMNS if c != "bestObjID"}
        spec["bestObjID"] = values("objID")
        spec["sciencePrimary"] = [1] * n
        extra = {c: values(c) for c in _EXTRA_COLUMNS}
        info = {c: values(c) for c in _INFO_COLUMNS} | {"reliable": [1] * n}
        if duplicate_every:
            _add_duplicates(spec, extra, info, duplicate_every)
        line = {"specObjID": list(spec["specObjID"])}

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
        PositionalSearch(photo["objID"], photo["type"], photo["ra"], photo["dec"]).install(c)

    def query(self, tsql: str) -> tuple[list[str], list[tuple]]:
        """Run a SkyServer (T-SQL) query; return column names and at most ``max_rows`` rows.

        Raises ``SQLError`` for anything SQLite rejects.
        """
        sql = translate_tsql(tsql)
        with self._lock:
            cur = self._conn.cursor()
            names: list[str] = []

            def trace(cursor: apsw.Cursor, statement: str, bindings: Any) -> bool:
                # The columns, once the statement is prepared: known even without a row.
                names[:] = [d[0] for d in cursor.getdescription()]
                return True

            cur.exec_trace = trace
            cur.execute(sql)
            rows = list(itertools.islice(cur, self.max_rows))
            cur.close()
        return names, rows


def _add_duplicates(spec: dict, extra: dict, info: dict, every: int) -> None:
    """A second spectrum for every ``every``-th object: same bestObjID, a worse redshift."""
    n = len(spec["specObjID"])
    for k in range(0, n, every):
        new_id = int(spec["specObjID"][k]) + (1 << 20)
        for table in (spec, extra, info):
            for name, column in table.items():
                column.append(new_id if name == "specObjID" else column[k])
        z_err = spec["zErr"][-1]
        spec["zErr"][-1] = None if z_err is None else float(z_err) * 1.5
        oh = extra["oh_p50"][-1]
        extra["oh_p50"][-1] = oh if oh in (None, -9999.0) else float(oh) + 0.01


def _column_values(col: Any) -> list[Any]:
    """Plain Python values of a table column, masked entries as None (SQL NULL)."""
    data = np.ma.asarray(col)
    out = data.data.tolist()
    mask = np.ma.getmaskarray(data)
    if mask.any():
        out = [None if m else v for v, m in zip(out, mask.tolist(), strict=True)]
    return [v.decode() if isinstance(v, bytes) else v for v in out]


def _create(conn: apsw.Connection, table: str, columns: dict[str, list], key: str) -> None:
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
    with conn:  # one transaction: apsw would otherwise commit each row
        conn.cursor().executemany(
            f"INSERT INTO {table} VALUES ({marks})", zip(*columns.values(), strict=True)
        )


TOP = re.compile(r"^\s*SELECT\s+(DISTINCT\s+|ALL\s+)?TOP\s*\(?\s*(\d+)\s*\)?\s", re.IGNORECASE)


_VALUES = re.compile(r"\(\s*VALUES\b", re.IGNORECASE)
_ALIAS = re.compile(r"\s*AS\s+(\w+)\s*\(([\w\s,]+)\)", re.IGNORECASE)


def _named_values(sql: str) -> str:
    """``(VALUES …) AS v(a, b)`` → ``(SELECT column1 AS a, column2 AS b FROM (VALUES …)) AS v``
    (SQLite names a VALUES list's columns column1, column2, …)."""
    out, pos = [], 0
    for match in _VALUES.finditer(sql):
        if match.start() < pos:
            continue
        depth, end = 0, match.start()
        for end in range(match.start(), len(sql)):  # the matching parenthesis
            depth += {"(": 1, ")": -1}.get(sql[end], 0)
            if depth == 0:
                break
        alias = _ALIAS.match(sql, end + 1)
        if alias is None:
            continue
        names = [n.strip() for n in alias.group(2).split(",")]
        columns = ", ".join(f"column{k + 1} AS {name}" for k, name in enumerate(names))
        body = sql[match.start() + 1 : end]
        out.append(sql[pos : match.start()])
        out.append(f"(SELECT {columns} FROM ({body})) AS {alias.group(1)}")
        pos = alias.end()
    return "".join(out) + sql[pos:]


def translate_tsql(tsql: str) -> str:
    """Translate the T-SQL bits galmet uses into SQLite: ``SELECT TOP n`` → ``LIMIT n``,
    ``dbo.`` prefixes dropped, ``CROSS APPLY`` → ``CROSS JOIN`` (SQLite's join with a
    table-valued function; CROSS keeps the left side outer, so the function gets its
    arguments), named ``VALUES`` lists. Comments are removed first, as SkyServer does."""
    sql = re.sub(r"/\*.*?\*/", " ", tsql, flags=re.DOTALL)
    sql = re.sub(r"--[^\r\n]*", "", sql)
    sql = re.sub(r"\bdbo\.", "", sql, flags=re.IGNORECASE)
    sql = re.sub(r"\bCROSS\s+APPLY\b", "CROSS JOIN", sql, flags=re.IGNORECASE)
    sql = _named_values(sql)
    sql = sql.strip().rstrip(";").strip()
    match = TOP.match(sql)
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
