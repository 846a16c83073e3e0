"""The ``galmet`` command line: one subcommand per public verb of the design.

Each subcommand lives in the module that does the work; that module provides
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only when their
command runs, so ``galmet --help`` stays fast and a command never pulls in torch or GalSim
unless it needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from galmet import __version__
from galmet.errors import GalmetError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "galmet.app.serve",
        "run the API and web page (embedded defaults: SQLite, in-process inference)",
    ),
    "worker": ("galmet.worker.cli", "run a Celery worker for batch jobs (GPU when present)"),
    "submit": ("galmet.app.submit", "send a target list to a galmet service as a batch job"),
    "simulate": (
        "galmet.training.simulate",
        "write a mock SDSS sample: catalog.csv, images/, truth.csv",
    ),
    "mock-skyserver": (
        "galmet.training.mock_skyserver",
        "serve a local stand-in for SDSS SkyServer",
    ),
    "catalog": ("galmet.training.catalog", "run the sample-selection query against SkyServer"),
    "download": (
        "galmet.training.download",
        "fetch image cutouts for a catalog: concurrent, resumable",
    ),
    "train": (
        "galmet.training.train",
        "train the ResNet-34: frozen head, then SGDR with layer-group rates",
    ),
    "baseline": (
        "galmet.training.baseline",
        "random forest on g, r, i magnitudes, same split and metrics as the CNN",
    ),
    "evaluate": (
        "galmet.training.evaluate",
        "RMSE, NMAD, outliers and figures of a model on the test split",
    ),
    "resolution": (
        "galmet.training.resolution",
        "the paper's resolution study: one model per image size, table and figure",
    ),
    "predict": (
        "galmet.app.predict",
        "predictions for image files or sky coordinates, without the server",
    ),
    "db": ("galmet.app.dbcli", "database migrations: galmet db upgrade applies them all"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galmet",
        description="Gas-phase metallicity of galaxies from SDSS gri images.",
    )
    parser.add_argument("--version", action="version", version=f"galmet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        # No help here: the command's own parser, built in main() with its arguments, answers
        # --help. Arguments are added there, only for the chosen command.
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(_module=module_name)
    return parser


def missing_package(command: str, exc: ModuleNotFoundError) -> int:
    """One line for a command whose package is not installed here (a bare GPU machine has
    torch but not astropy, GalSim or the web stack); galmet's own modules re-raise."""
    package = (exc.name or "").partition(".")[0]
    if not package or package == "galmet":
        raise exc
    print(
        f"galmet: error: galmet {command} needs the package {package!r}, which is not "
        "installed here (pip install galmet installs it)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # First pass finds the command; the second parses its own arguments.
    known, _ = parser.parse_known_args(argv)
    if not getattr(known, "command", None):
        parser.print_help()
        return 2
    try:
        module = importlib.import_module(known._module)
    except ModuleNotFoundError as exc:
        return missing_package(known.command, exc)
    sub = argparse.ArgumentParser(
        prog=f"galmet {known.command}", description=COMMANDS[known.command][1]
    )
    module.add_arguments(sub)
    args = sub.parse_args(argv[argv.index(known.command) + 1 :])
    try:
        return int(module.main(args) or 0)
    except ModuleNotFoundError as exc:  # a lazy import of an optional part
        return missing_package(known.command, exc)
    except GalmetError as exc:
        print(f"galmet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galmet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
