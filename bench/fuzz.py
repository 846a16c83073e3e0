"""Fuzz the HTTP API against its own OpenAPI schema, far past the CI slice. Run by hand:

    python bench/fuzz.py [--examples 900] [--seed N] [--demo]

The embedded service (in-process inference, a fresh SQLite database, the mock SkyServer on
loopback) driven in-process by schemathesis' engine: every phase (examples, coverage,
fuzzing, stateful) and every check on every operation, uploads and jobs included, with the
exclusions of ``tests/schemathesis_hooks.py`` (each with its reason) and nothing else.
``--examples`` per operation and phase; the default gives over 10,000 cases. The model is a
small random-weight network (the contract does not depend on its numbers); ``--demo`` builds
or reuses the mock-sky demo model instead.

Prints the failures (if any), then one JSON line: cases, operations, server errors,
contract failures, seconds, seed. Exits non-zero unless the run is clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.schemathesis_hooks and tests.helpers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=900, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="default: a new one")
    parser.add_argument("--demo", action="store_true", help="the mock-sky demo model")
    args = parser.parse_args()

    import schemathesis
    from schemathesis.python import asgi

    from galmet.app.core.config import Settings
    from galmet.app.main import create_app
    from galmet.training.mock_skyserver import create_app as mock_skyserver
    from galmet.training.mock_skyserver import serve_in_thread
    from galmet.training.mocksky import MockSky
    from tests.helpers import tiny_checkpoint
    from tests.schemathesis_hooks import contract_config, run_contract

    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_in_thread(mock_skyserver(MockSky(200, seed=1))) as sky,
    ):
        model = None
        if not args.demo:
            model = Path(tmp) / "tiny.pt"
            tiny_checkpoint(config={"image_size": 64, "pixel_scale": 0.396}).save(model)
        settings = Settings(
            database_url=f"sqlite:///{tmp}/fuzz.sqlite3",
            model=model,
            skyserver_url=sky,
            device="cpu",
            tta=1,
            cache_dir=Path(tmp) if model else Settings().cache_dir,
            skyserver_retries=0,
            skyserver_timeout=5.0,
            skyserver_rate=0,
        )
        app = create_app(settings)
        schema = schemathesis.openapi.from_asgi(
            "/openapi.json", app, config=contract_config(args.examples, seed=args.seed)
        )
        started = time.perf_counter()
        try:
            run = run_contract(schema)
        finally:
            asgi.shutdown_lifespans()
        seconds = time.perf_counter() - started

    for line in run.failures + run.errors:
        print(line[:2000])
    figures = {
        "cases": run.cases,
        "operations": len({op for op in run.operations if " " in op}),
        "server_errors": run.server_errors,
        "contract_failures": len(run.failures),
        "engine_errors": len(run.errors),
        "seconds": round(seconds, 1),
        "cases_per_second": round(run.cases / seconds, 1),
        "seed": run.seed,
        "examples": args.examples,
        "model": "demo" if args.demo else "tiny random",
    }
    print(json.dumps(figures))
    return 1 if run.failures or run.errors or run.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
