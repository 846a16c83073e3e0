"""Target lists of batch jobs (``app.targets``): CSV, JSON and VOTable, good rows and bad."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
from astropy import units as u
from astropy.io.votable import from_table
from astropy.table import MaskedColumn, Table

from galmet.app.targets import (
    MAX_ID_LENGTH,
    MAX_LINE_CHARS,
    TargetRow,
    TargetsError,
    parse_csv_targets,
    parse_json_targets,
    parse_targets,
    parse_votable_targets,
    target_format,
)

CAP = 1000


def csv_rows(text: str | bytes, cap: int = CAP) -> list[TargetRow]:
    data = text.encode() if isinstance(text, str) else text
    return list(parse_csv_targets(io.BytesIO(data), cap))


def raises(status: int, fn, *args) -> TargetsError:
    """Call ``fn`` (and drain what it returns) expecting TargetsError with ``status``."""
    with pytest.raises(TargetsError) as info:
        result = fn(*args)
        list(result)
    assert info.value.status == status, info.value
    assert "\n" not in str(info.value)
    return info.value


class GeneratedStream(io.RawIOBase):
    """A stream whose bytes come from a generator, counting how many were read: proves a
    parser stops early."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending, self.bytes_read = chunks, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        self.bytes_read += n
        return n


def votable_bytes(table: Table) -> bytes:
    out = io.BytesIO()
    from_table(table).to_xml(out)
    return out.getvalue()


# ---------------------------------------------------------------------------- CSV
def test_good_csv_with_bom_crlf_comments_extra_columns_and_sexagesimal() -> None:
    text = (
        "\ufeff# targets for tonight\r\n"
        "\r\n"
        " objID , RA ,Dec, mag\r\n"
        "# a comment between rows\r\n"
        "1237648720693755918,150.1,2.2,17.1\r\n"
        "\r\n"
        ",10:00:24,+02:12:00,18\r\n"
        '"b, quoted",  0,-90,\r\n'
        "dup,359.5,90,x\r\n"
        "dup,1,-0:30:00,y\r\n"
    )
    rows = csv_rows(text.encode("utf-8"))
    assert [r.row for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.error is None for r in rows), rows
    assert [r.id for r in rows] == ["1237648720693755918", None, "b, quoted", "dup", "dup"]
    assert rows[0].ra == 150.1 and rows[0].dec == 2.2
    assert rows[1].ra == pytest.approx(150.1) and rows[1].dec == pytest.approx(2.2)
    assert (rows[2].ra, rows[2].dec) == (0.0, -90.0)
    assert rows[4].dec == pytest.approx(-0.5)


def test_csv_bad_rows_are_reported_and_good_rows_pass() -> None:
    text = (
        "id,ra,dec\n"
        "ok1,150.1,2.2\n"
        "far,400,2\n"
        "junk,abc,2\n"
        "nan,nan,inf\n"
        "empty,,\n"
        "short,150\n"
        "south,150,-91\n"
        "ok2,151,3\n"
    )
    rows = csv_rows(text)
    assert [r.row for r in rows] == list(range(1, 9))
    good = [r for r in rows if r.error is None]
    assert [(r.id, r.ra, r.dec) for r in good] == [("ok1", 150.1, 2.2), ("ok2", 151.0, 3.0)]
    errors = {r.id: r.error for r in rows if r.error}
    assert errors["far"] == "row 2: ra must be in [0, 360) degrees, got 400"
    assert errors["junk"].startswith("row 3: cannot read ra 'abc'")
    assert errors["nan"] == "row 4: ra must be finite, got 'nan'; dec must be finite, got 'inf'"
    assert errors["empty"] == "row 5: ra is empty; dec is empty"
    assert errors["short"] == "row 6: dec is missing"
    assert errors["south"] == "row 7: dec must be in [-90, 90] degrees, got -91"
    for r in rows:
        if r.error:
            assert r.ra is None and r.dec is None and "\n" not in r.error


def test_csv_missing_column_raises_before_iterating_and_names_the_columns() -> None:
    stream = io.BytesIO(b"name,RA,declination_deg\na,1,2\n")
    with pytest.raises(TargetsError) as info:
        parse_csv_targets(stream, CAP)  # the header is checked at once, not on iteration
    assert info.value.status == 422
    assert "no dec" in str(info.value)
    assert "'name', 'ra', 'declination_deg'" in str(info.value)
    assert raises(422, csv_rows, "id,x,y\n1,2,3\n").message.count("no ra or dec") == 1


@pytest.mark.parametrize(
    "text", ["", "\ufeff", "\n\n  \n", "# only a comment\n", "ra,dec\n", "ra,dec\n# c\n,\n"]
)
def test_csv_without_targets(text: str) -> None:
    assert str(raises(422, csv_rows, text)) == "the job has no targets"


def test_csv_at_the_cap_passes_and_over_it_raises() -> None:
    body = "ra,dec\n" + "".join(f"{i % 360},1\n" for i in range(5))
    assert len(csv_rows(body, cap=5)) == 5
    error = raises(413, csv_rows, body, 4)
    assert str(error) == "the job has more than 4 targets (GALMET_MAX_JOB_TARGETS)"


def test_csv_cap_stops_reading_early() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"id,ra,dec\n"
        for i in range(200_000):  # ~3.5 MB, never all read
            yield f"t{i},150.1,2.2\n".encode()

    stream = GeneratedStream(chunks())
    rows = parse_csv_targets(stream, 10)
    got = []
    with pytest.raises(TargetsError) as info:
        for r in rows:
            got.append(r)
    assert info.value.status == 413
    assert len(got) == 10  # rows before the cap came through, streamed
    assert stream.bytes_read < 100_000


def test_csv_invalid_utf8() -> None:
    error = raises(400, csv_rows, b"id,ra,dec\na,1,2\nb\xff\xfe,1,2\n")
    assert "not UTF-8" in str(error)
    assert "not UTF-8" in str(raises(400, csv_rows, b"\xff\xfeid,ra,dec\n"))


def test_csv_tab_and_semicolon_delimiters() -> None:
    assert [r.ra for r in csv_rows("id\tra\tdec\na\t150.5\t2\n")] == [150.5]
    assert [r.dec for r in csv_rows("ra;dec;name\n10;-5;x\n")] == [-5.0]


def test_csv_duplicate_coordinate_column_is_ambiguous() -> None:
    assert "appears 2 times" in str(raises(422, csv_rows, "ra,RA,dec\n1,2,3\n"))


def test_csv_line_too_long() -> None:
    body = "ra,dec,note\n1,2," + "x" * (MAX_LINE_CHARS + 10) + "\n"
    assert "longer than" in str(raises(422, csv_rows, body))


def test_csv_long_id_is_an_invalid_row() -> None:
    (row,) = csv_rows(f"id,ra,dec\n{'a' * 300},1,2\n")
    assert row.error == f"row 1: id is longer than {MAX_ID_LENGTH} characters"
    assert row.id == "a" * MAX_ID_LENGTH and row.ra is None


def test_csv_leaves_the_callers_stream_open() -> None:
    with tempfile.SpooledTemporaryFile() as upload:  # what an upload arrives as
        upload.write(b"ra,dec\n1,2\n")
        upload.seek(0)
        rows = list(parse_targets(upload, "t.csv", "text/csv", CAP))
        assert not upload.closed
    assert rows == [TargetRow(1, None, 1.0, 2.0, None)]


# ---------------------------------------------------------------------------- JSON
def test_json_list_and_targets_forms() -> None:
    targets = [
        {"ra": 150.1, "dec": 2.2, "id": "a"},
        {"RA ": "10:00:24", " Dec": "+02:12:00", "objid": 1237648720693755918},
        {"ra": 400, "dec": 1},
        {"dec": 1},
        {"ra": True, "dec": [1]},
        {"ra": 10**400, "dec": None, "id": {"x": 1}},
        "150 2",
        {"ra": 1, "dec": 2, "id": "  "},
    ]
    rows = parse_json_targets(targets, CAP)
    assert rows == parse_json_targets({"targets": targets}, CAP)
    assert [r.row for r in rows] == list(range(1, 9))
    assert rows[0] == TargetRow(1, "a", 150.1, 2.2, None)
    assert rows[1].id == "1237648720693755918" and rows[1].ra == pytest.approx(150.1)
    assert rows[2].error == "row 3: ra must be in [0, 360) degrees, got 400"
    assert rows[3].error == "row 4: ra is missing"
    assert rows[4].error == (
        "row 5: ra must be a number or an angle string; dec must be a number or an angle string"
    )
    assert rows[5].error == (
        "row 6: id must be a string or a number; ra is out of range; dec is missing"
    )
    assert rows[6].error == "row 7: a target must be an object"
    assert rows[7] == TargetRow(8, None, 1.0, 2.0, None)


@pytest.mark.parametrize("data", [{"ra": 1, "dec": 2}, "targets", 3, None, {"targets": 5}])
def test_json_not_a_list(data) -> None:
    assert "must be a list of targets" in str(raises(422, parse_json_targets, data, CAP))


def test_json_whole_input_errors() -> None:
    assert str(raises(422, parse_json_targets, [], CAP)) == "the job has no targets"
    assert str(raises(422, parse_json_targets, {"targets": []}, CAP)) == "the job has no targets"
    assert "more than 2 targets" in str(raises(413, parse_json_targets, [{}] * 3, 2))
    assert "must be an object" in str(raises(422, parse_json_targets, [[1, 2], [3, 4]], CAP))
    error = raises(422, parse_json_targets, [{"x": 1, "dec": 2}, {"y": 1}], CAP)
    assert "no ra among the columns found: 'dec', 'x', 'y'" in str(error)


# ---------------------------------------------------------------------------- VOTable
def test_votable_round_trip_input() -> None:
    table = Table()
    table["objID"] = ["a", "b", "c", "d"]
    table["RA"] = MaskedColumn([150.1, 400.0, 0.0, 10.0], unit="deg", mask=[0, 0, 1, 0])
    table["DEC"] = np.array([2.2, 1.0, 1.0, np.nan])
    table["flux"] = [1, 2, 3, 4]
    rows = parse_votable_targets(io.BytesIO(votable_bytes(table)), CAP)
    assert rows[0] == TargetRow(1, "a", 150.1, 2.2, None)
    assert rows[1].error == "row 2: ra must be in [0, 360) degrees, got 400"
    assert rows[2].error == "row 3: ra is missing"
    assert rows[3].error == "row 4: dec is missing"  # NaN is null in a VOTable
    assert [r.id for r in rows] == ["a", "b", "c", "d"]


def test_votable_columns_by_ucd_units_and_strings() -> None:
    table = Table()
    table["alpha"] = [np.radians(150.0), np.radians(10.0)] * u.rad
    table["delta"] = ["+02:12:00", "-05:00:00"]
    table["n"] = np.array([7, 8], dtype=np.int64)
    votable = from_table(table)
    fields = votable.get_first_table().fields
    for field, ucd in zip(fields, ["pos.eq.ra;meta.main", "pos.eq.dec", "meta.id"], strict=True):
        field.ucd = ucd
    out = io.BytesIO()
    votable.to_xml(out)
    rows = parse_votable_targets(io.BytesIO(out.getvalue()), CAP)
    assert [r.id for r in rows] == ["7", "8"]
    assert [r.ra for r in rows] == pytest.approx([150.0, 10.0])
    assert [r.dec for r in rows] == pytest.approx([2.2, -5.0])


def test_votable_whole_input_errors() -> None:
    def parse(data: bytes, cap: int = CAP) -> list[TargetRow]:
        return parse_votable_targets(io.BytesIO(data), cap)

    assert "cannot read the VOTable" in str(raises(400, parse, b"<VOTABLE><RESOURCE>"))
    assert "cannot read the VOTable" in str(raises(400, parse, b"not xml at all"))
    empty = b'<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE/></VOTABLE>'
    assert str(raises(422, parse, empty)) == "the VOTable has no table"
    none = Table({"ra": np.zeros(0), "dec": np.zeros(0)})
    assert str(raises(422, parse, votable_bytes(none))) == "the job has no targets"
    three = Table({"ra": [1.0, 2, 3], "dec": [1.0, 2, 3]})
    assert "more than 2 targets" in str(raises(413, parse, votable_bytes(three), 2))
    mags = Table({"ra": [1.0] * u.mag, "dec": [1.0]})
    assert "not an angle" in str(raises(422, parse, votable_bytes(mags)))
    other = Table({"x": [1.0], "dec": [1.0]})
    assert "no ra among the columns found: 'x', 'dec'" in str(
        raises(422, parse, votable_bytes(other))
    )


# ---------------------------------------------------------------------------- dispatch
CSV = b"id,ra,dec\na,150.1,2.2\n"
JSON = json.dumps([{"id": "a", "ra": 150.1, "dec": 2.2}]).encode()
VOT = votable_bytes(Table({"id": ["a"], "ra": [150.1], "dec": [2.2]}))
EXPECTED = [TargetRow(1, "a", 150.1, 2.2, None)]


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "kind"),
    [
        (CSV, "t.csv", "text/csv; charset=utf-8", "csv"),
        (CSV, "t.csv", "application/vnd.ms-excel", "csv"),
        (CSV, "T.CSV", "application/octet-stream", "csv"),
        (CSV, None, None, "csv"),
        (CSV, "t.txt", "text/plain", "csv"),
        (CSV, None, "application/x-www-form-urlencoded", "csv"),  # curl --data-binary
        (JSON, None, "application/json", "json"),
        (JSON, "t.json", None, "json"),
        (b"\xef\xbb\xbf \n" + JSON, None, "", "json"),
        (VOT, "t.vot", None, "votable"),
        (VOT, None, "application/x-votable+xml", "votable"),
        (VOT, "t.dat", "application/octet-stream", "votable"),
    ],
)
def test_parse_targets_dispatch(data, filename, content_type, kind) -> None:
    stream = io.BytesIO(data)
    assert target_format(stream, filename, content_type) == kind
    assert stream.tell() == 0  # sniffing left the stream where it was
    assert list(parse_targets(stream, filename, content_type, CAP)) == EXPECTED


@pytest.mark.parametrize("data", [CSV, JSON, VOT])
def test_parse_targets_sniffs_a_stream_that_cannot_seek(data: bytes) -> None:
    stream = GeneratedStream(iter([data[:10], data[10:]]))
    assert list(parse_targets(stream, None, None, CAP)) == EXPECTED


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "status", "words"),
    [
        (CSV, "t.png", "image/png", 415, "unsupported target list type 'image/png'"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "t.png", None, 415, "binary"),
        (b"SIMPLE  =                    T", "t.fits", None, 400, "cannot read the FITS file"),
        ("id,ra,dec\n".encode("utf-16"), None, None, 400, "UTF-16"),
        (b"[{'ra': 1}]", None, "application/json", 400, "invalid JSON"),
        (b"[" * 100_000, None, "application/json", 400, "invalid JSON"),
        (b'[{"ra": 1, "dec": 2}]\xff', None, "application/json", 400, "not UTF-8"),
        (b'{"ra": 1, "dec": 2}', None, "application/json", 422, "must be a list"),
        (b"", None, None, 422, "no targets"),
    ],
)
def test_parse_targets_whole_input_errors(data, filename, content_type, status, words) -> None:
    error = raises(status, parse_targets, io.BytesIO(data), filename, content_type, CAP)
    assert words in str(error)


# ---------------------------------------------------------------------------- the whole row
def test_csv_rows_keep_every_cell_by_column_name() -> None:
    text = b"name,ra,dec,mag,,mag\na,150.1,2.2,17.1,x,3,extra\nb,400,1\n"
    first, second = parse_targets(io.BytesIO(text), "t.csv", None, 10)
    assert first.cells == {
        "name": "a", "ra": "150.1", "dec": "2.2", "mag": "17.1", "col5": "x", "mag_2": "3",
        "col7": "extra",
    }  # fmt: skip
    # an invalid row keeps its cells (ra as given), missing ones are None
    assert second.error and second.cells == {
        "name": "b", "ra": "400", "dec": "1", "mag": None, "col5": None, "mag_2": None,
    }  # fmt: skip


def test_json_and_votable_rows_keep_every_cell() -> None:
    body = b'[{"ra": 1.5, "dec": 2, "z": 0.1, "tags": ["a"]}, 7, {"ra": "x", "dec": 1}]'
    rows = parse_targets(io.BytesIO(body), "t.json", None, 10)
    assert [r.cells for r in rows] == [
        {"ra": 1.5, "dec": 2, "z": 0.1, "tags": ["a"]},
        {"value": 7},
        {"ra": "x", "dec": 1},
    ]
    table = Table()
    table["RA"] = MaskedColumn([150.1, 400.0], unit="deg")
    table["dec"] = [2.2, 1.0]
    table["mag"] = MaskedColumn([17.5, np.nan], mask=[False, True])
    table["name"] = ["p", "q"]
    buffer = io.BytesIO()
    from_table(table).to_xml(buffer)
    buffer.seek(0)
    rows = parse_targets(buffer, "t.vot", None, 10)
    assert [r.cells for r in rows] == [
        {"RA": 150.1, "dec": 2.2, "mag": 17.5, "name": "p"},
        {"RA": 400.0, "dec": 1.0, "mag": None, "name": "q"},
    ]


# ---------------------------------------------------------------------------- petroR90_r
def test_a_rows_own_petro_radius() -> None:
    from galmet.app.targets.rows import given_petro_radius

    assert given_petro_radius({"ra": "1", "PetroR90_R": "4.5"}) == 4.5
    assert given_petro_radius({"petro_r90": 3}) == 3.0
    assert given_petro_radius({"ra": 1}) is None and given_petro_radius(None) is None
    assert given_petro_radius({"petroR90_r": " "}) is None  # an empty cell: not given
    for bad in ("x", 0, -1.0, "nan", True):
        with pytest.raises(ValueError, match="petroR90_r must be a positive number of arcsec"):
            given_petro_radius({"petroR90_r": bad})
