"""The training and model code on a bare GPU machine: no astropy, GalSim or web stack.

The GPU machines galmet is checked on have torch, torchvision, NumPy, Pillow, tqdm, SciPy,
scikit-learn and matplotlib, and none of astropy, GalSim, FastAPI, SQLAlchemy, Celery,
pydantic, platformdirs, tenacity or aiolimiter. ``tests/bare/sitecustomize.py`` makes this
Python refuse those imports; these tests run galmet's training side under it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from galmet.errors import GalmetError
from galmet.training.table import CatalogTable, read_csv_table

ROOT = Path(__file__).resolve().parents[1]
BARE = ROOT / "tests" / "bare"
#: What ``galmet train``, the predictor and the GPU check import.
TRAINING_MODULES = [
    "galmet.cli",
    "galmet.model",
    "galmet.predictor",
    "galmet.preprocess",
    "galmet.device",
    "galmet.training.train",
    "galmet.training.trainer",
    "galmet.training.dataset",
    "galmet.training.distributed",
    "galmet.training.calibration",
    "galmet.training.figures",
    "galmet.training.evaluate",
]


def bare_python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python that cannot import the packages the GPU machine lacks."""
    path = os.pathsep.join(filter(None, [str(BARE), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_bare_python_refuses_the_heavy_packages():
    res = bare_python(
        "import importlib\n"
        "for m in ('astropy.table', 'galsim', 'fastapi', 'sqlalchemy', 'celery', 'tenacity'):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(f'{m} imported')\n"
        "import numpy, torch, PIL, tqdm\n"
    )
    assert res.returncode == 0, res.stderr


def test_training_and_the_model_import_without_the_heavy_packages():
    imports = "; ".join(f"import {m}" for m in TRAINING_MODULES)
    res = bare_python(
        f"{imports}\nimport sys\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'astropy', 'galsim', "
        "'fastapi', 'sqlalchemy', 'celery', 'tenacity', 'aiolimiter', 'platformdirs'})\n"
        "print('loaded', heavy)\n"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "loaded []" in res.stdout


def test_galmet_train_help_runs_bare():
    res = bare_python("from galmet.cli import main; main(['train', '--help'])")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--data-on-device" in res.stdout


def test_a_command_whose_package_is_missing_says_so_in_one_line(tmp_path):
    res = bare_python(
        f"from galmet.cli import main; raise SystemExit(main(['simulate', '--n', '2', "
        f"'--out', {str(tmp_path / 'mock')!r}]))"
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "galmet: error: galmet simulate needs the package 'astropy', which is not installed "
        "here (pip install galmet installs it)"
    ]


def test_the_catalog_reads_as_astropy_reads_it(tmp_path):
    """Every column with astropy's values and kinds: int64 objIDs to the last digit, floats,
    text; an empty number is NaN (astropy masks it), which select_rows leaves out."""
    path = tmp_path / "catalog.csv"
    path.write_text(
        "objID,ra,oh_p50,bptclass,name\n"
        "1237645876874298907,156.75043262317104,9.09,1,a b\n"
        "1237645876874298000,10.5,,4,c\n"
        "587722952230174996,0.0,-9999,-1,d\n"
    )
    ours, theirs = read_csv_table(path), Table.read(path, format="ascii.csv")
    assert ours.colnames == theirs.colnames and len(ours) == len(theirs) == 3
    assert ours["objID"].dtype == np.int64
    assert ours["objID"].tolist() == [int(v) for v in theirs["objID"]]
    assert ours["bptclass"].tolist() == [1, 4, -1]
    np.testing.assert_array_equal(ours["ra"], np.asarray(theirs["ra"], dtype=float))
    assert np.isnan(ours["oh_p50"][1]) and theirs["oh_p50"].mask[1]
    assert ours["oh_p50"][2] == -9999.0
    assert ours["name"].tolist() == ["a b", "c", "d"]


def test_catalog_rows_index_sort_and_iterate_like_a_table():
    t = CatalogTable({"objID": np.array([30, 10, 20]), "ra": np.array([3.0, 1.0, 2.0])})
    s = t.sorted_by("objID")
    assert s["objID"].tolist() == [10, 20, 30] and s["ra"].tolist() == [1.0, 2.0, 3.0]
    assert s[np.array([2, 0])]["objID"].tolist() == [30, 10]
    assert s[np.array([True, False, True])]["ra"].tolist() == [1.0, 3.0]
    assert s[1] == {"objID": 20, "ra": 2.0}
    assert [row["objID"] for row in s] == [10, 20, 30]


def test_a_bad_catalog_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("objID,ra\n1,2\n3\n")
    with pytest.raises(GalmetError, match="row 3 has 1 fields, the header 2"):
        read_csv_table(bad)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(GalmetError, match="empty"):
        read_csv_table(tmp_path / "empty.csv")
