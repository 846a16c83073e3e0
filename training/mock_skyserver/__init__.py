"""``galmet mock-skyserver``: a local stand-in for SDSS SkyServer, backed by the mock sky.

It answers SkyServer's ``getjpeg`` and ``SqlSearch`` in the real formats (see ``server``), so
everything that talks to SkyServer is tested offline. The parts:

- ``sql``: the mock sky as SkyServer's tables in SQLite, T-SQL translated, CSV answers;
- ``faults``: deterministic fault injection (failures, latency, hangs, truncated JPEGs) and
  the request counters behind ``/mock/stats``;
- ``server``: the ASGI app (``create_app``) and its SkyServer-shaped errors;
- ``harness``: uvicorn in a background thread (``serve_in_thread``), which tests also use to
  serve galmet's own app;
- ``cli``: the ``galmet mock-skyserver`` command (``add_arguments``, ``main``, ``load_sky``).
"""

from galmet.training.mock_skyserver.cli import add_arguments, load_sky, main
from galmet.training.mock_skyserver.faults import Faults
from galmet.training.mock_skyserver.harness import serve_in_thread
from galmet.training.mock_skyserver.server import create_app, skyserver_error
from galmet.training.mock_skyserver.sql import MAX_ROWS, SkySQL, csv_table, translate_tsql

__all__ = [
    "MAX_ROWS",
    "Faults",
    "SkySQL",
    "add_arguments",
    "create_app",
    "csv_table",
    "load_sky",
    "main",
    "serve_in_thread",
    "skyserver_error",
    "translate_tsql",
]
