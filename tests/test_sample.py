"""The paper's sample cuts, defined once: the SQL text and the NumPy mask read the same list."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from galmet.training.sample import MISSING, Cut, cuts, mask, sql_where


def qualify(column: str) -> str:
    return f"t.{column}"


def test_sql_where_holds_every_cut():
    where = " ".join(sql_where(qualify).split())
    expected = [
        "t.petroMag_r > 10 AND t.petroMag_r < 18",
        "t.modelMag_u - t.modelMag_r > 0 AND t.modelMag_u - t.modelMag_r < 6",
        *(f"t.modelMag_{b} > 10 AND t.modelMag_{b} < 25" for b in "ugriz"),
        "t.rChi2 < 2",
        "t.zErr > 0 AND t.zErr < 0.01",
        "t.z > 0.02",
        "t.oh_p50 != -9999",
    ]
    assert where == " AND ".join(expected)
    assert "t.lgm_tot_p50 > 0" in sql_where(qualify, with_mass=True)


def test_a_cut_that_is_not_strict_keeps_its_bounds():
    cut = Cut("z", 0.02, 0.25, strict=False)
    assert cut.sql() == "z >= 0.02 AND z <= 0.25"
    assert cut.mask({"z": np.array([0.0199, 0.02, 0.1, 0.25, 0.2501])}).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]


def good_row() -> dict[str, float]:
    """A galaxy that passes every cut, with room on each side."""
    row = {f"modelMag_{b}": 17.0 for b in "ugriz"}
    row |= {"modelMag_u": 19.0, "petroMag_r": 16.0, "rChi2": 1.0, "zErr": 1e-4, "z": 0.1}
    return row | {"oh_p50": 9.0, "lgm_tot_p50": 10.0}


# (change to the good row, passes without mass, passes with mass): edges are excluded, as
# every cut is strict.
ROWS = [
    ({}, True, True),
    ({"petroMag_r": 18.0}, False, False),
    ({"petroMag_r": 17.999}, True, True),
    ({"petroMag_r": 10.0}, False, False),
    ({"modelMag_u": 17.0}, False, False),  # u - r = 0
    ({"modelMag_u": 22.999, "modelMag_r": 17.0}, True, True),  # u - r just under 6
    ({"modelMag_u": 23.0}, False, False),  # u - r = 6
    ({"modelMag_u": MISSING}, False, False),  # failed photometry
    ({"modelMag_z": 25.0}, False, False),
    ({"modelMag_g": 10.0}, False, False),
    ({"modelMag_i": 24.99}, True, True),
    ({"rChi2": 2.0}, False, False),
    ({"rChi2": 1.999}, True, True),
    ({"zErr": 0.0}, False, False),
    ({"zErr": 0.01}, False, False),
    ({"zErr": -1.0}, False, False),
    ({"z": 0.02}, False, False),
    ({"z": 0.0201}, True, True),
    ({"oh_p50": MISSING}, False, False),
    ({"oh_p50": np.nan}, True, True),  # only -9999 means "not measured"
    ({"lgm_tot_p50": 0.0}, True, False),
    ({"lgm_tot_p50": MISSING}, True, False),
]


@pytest.mark.parametrize("as_table", [False, True])
def test_mask_agrees_with_the_hand_written_expectation(as_table):
    rows = [good_row() | change for change, _, _ in ROWS]
    columns = {name: np.array([r[name] for r in rows]) for name in rows[0]}
    data = Table(columns) if as_table else columns
    assert mask(data).tolist() == [keep for _, keep, _ in ROWS]
    assert mask(data, with_mass=True).tolist() == [keep for _, _, keep in ROWS]


def test_with_mass_adds_one_cut():
    assert cuts(with_mass=True)[:-1] == cuts()
    assert cuts(with_mass=True)[-1].column == "lgm_tot_p50"
