"""The house's shape: one import name, layers that point one way, no cycles.

import-linter checks the contracts in ``tests/layers.toml``. The source folders ``app/``,
``training/`` and ``worker/`` install as ``galmet.app`` … (setuptools' package-dir), but the
import graph is read from the file system, so each check lays the tree out as it installs,
in a temporary folder, and runs ``lint-imports`` there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "tests" / "layers.toml"


def package_dirs() -> dict[str, str]:
    """Import name -> source folder, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["package-dir"]


def installed_layout(dest: Path) -> Path:
    """Copy the Python sources to ``dest`` laid out by import name; returns ``dest``."""
    for name, folder in package_dirs().items():
        target = dest.joinpath(*name.split("."))
        shutil.copytree(
            ROOT / folder,
            target,
            ignore=lambda d, names: [n for n in names if n == "__pycache__" or n.endswith(".pyc")],
            dirs_exist_ok=True,
        )
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
         " sys.argv = ['lint-imports', '--config', sys.argv[1], '--no-cache'];"
         " lint_imports_command()", str(CONTRACTS)],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in package_dirs().items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed, f"pyproject.toml lists {sorted(listed)}; the folders: {sorted(found)}"


def test_layer_contracts_hold(tmp_path):
    proc = lint(installed_layout(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("galmet/model.py", "import galmet.app.db", "The core imports nothing above it"),
        ("galmet/app/cache.py", "import galmet.worker.tasks", "Nothing imports the worker"),
        ("galmet/training/dataset.py", "import galmet.app.db", "Training does not use the service"),
        ("galmet/training/train.py", "import fastapi", "without the web stack"),
        ("galmet/app/jobs/store.py", "import galmet.app.jobs.service", "No cycles"),
    ],
)
def test_a_planted_back_import_breaks_a_contract(tmp_path, module, planted, contract):
    tree = installed_layout(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    proc = lint(tree)
    assert proc.returncode != 0
    assert contract in proc.stdout and "BROKEN" in proc.stdout


def test_the_wheel_installs_one_name_only(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("galmet-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.startswith("galmet-")} == {"galmet"}, tops


def test_a_users_own_app_and_training_do_not_shadow_galmet(tmp_path):
    (tmp_path / "app.py").write_text("raise SystemExit('the user app was imported')\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("raise SystemExit('user training')\n")
    code = "import galmet.app.main, galmet.training.train, galmet.worker.tasks; print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    proc = subprocess.run(
        [sys.executable, "-m", "galmet", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "simulate" in proc.stdout, proc.stderr[-2000:]
