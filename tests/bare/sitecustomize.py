"""Make this Python look like the bare GPU machine: galmet's dependencies it lacks fail to import.

Put this folder first on PYTHONPATH (``PYTHONPATH=tests/bare``) and Python runs this file at
start-up. The device image (``/work/.library/device/KINDS.md``: torch, torchvision, numpy,
pillow, tqdm, scipy, scikit-learn, matplotlib, httpx, filelock …) has none of the packages
below; the training and model code must import and run without them
(``tests/test_bare_machine.py``).
"""

from __future__ import annotations

import sys

#: Top-level names of galmet's dependencies that the device image does not have.
BLOCKED = frozenset(
    {
        "astropy",
        "galsim",
        "platformdirs",
        "tenacity",
        "aiolimiter",
        "apsw",
        "pydantic",
        "pydantic_settings",
        "fastapi",
        "fastapi_offline",
        "starlette",
        "uvicorn",
        "multipart",
        "python_multipart",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "celery",
        "kombu",
        "redis",
    }
)


class BlockHeavyImports:
    """A meta-path finder that refuses the blocked packages, as if they were not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (bare machine)", name=name)
        return None


sys.meta_path.insert(0, BlockHeavyImports())
