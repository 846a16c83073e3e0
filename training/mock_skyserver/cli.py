"""``galmet mock-skyserver``: build (or load) a mock sky and serve it until interrupted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from galmet.errors import GalmetError
from galmet.training.mock_skyserver.faults import Faults
from galmet.training.mock_skyserver.harness import bind_socket
from galmet.training.mock_skyserver.server import RELEASE, create_app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options: where to listen, which sky, and what faults to inject."""
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--n",
        type=int,
        default=2000,
        help="number of sample galaxies in the mock sky (default 2000)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the mock sky and of the fault draws (default 0)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="serve the sky of a `galmet simulate` directory (its mock.json)",
    )
    parser.add_argument(
        "--release",
        default="dr17",
        help="data release in the advertised base URL (any dr<N> is served)",
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="fraction of requests answered HTTP 500"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument(
        "--cutout-cache",
        type=int,
        default=0,
        help="keep this many rendered cutouts in memory (benchmarks; default 0)",
    )
    parser.add_argument(
        "--truncate-rate", type=float, default=0.0, help="fraction of JPEGs cut short"
    )
    parser.add_argument(
        "--timeout-rate", type=float, default=0.0, help="fraction of requests that hang for 30 s"
    )
    parser.add_argument(
        "--faults-only",
        choices=["getjpeg", "sqlsearch"],
        default=None,
        help="apply the faults above to one endpoint only (e.g. SQL down, cutouts up)",
    )
    parser.add_argument(
        "--off-footprint",
        choices=["404", "black"],
        default="404",
        help="answer cutouts off the imaging as current SkyServer does (404 with a JPEG, the "
        "default) or as older versions did (a near-black 200)",
    )
    parser.add_argument(
        "--duplicate-every",
        type=int,
        default=0,
        help="give every k-th galaxy a second science-primary spectrum, as SDSS has for "
        "galaxies observed twice (default 0: none)",
    )


def load_sky(data: Path | None, n: int, seed: int) -> Any:
    """The MockSky that ``galmet simulate`` wrote to ``data`` (its mock.json), or a fresh
    one of ``n`` galaxies from ``seed``."""
    from galmet.training.mocksky import MockSky

    if data is None:
        if n < 1:
            raise GalmetError(f"--n must be at least 1, got {n}")
        return MockSky(n, seed=seed)
    meta_path = data / "mock.json"
    if not meta_path.is_file():
        raise GalmetError(f"{meta_path} not found: is {data} a `galmet simulate` directory?")
    try:
        return MockSky.from_dir(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalmetError(f"{meta_path} does not describe a mock sky: {exc}") from None


def main(args: argparse.Namespace) -> int:
    """Serve the mock SkyServer in the foreground; returns the exit status."""
    if not RELEASE.fullmatch(args.release):
        raise GalmetError(f"--release must look like dr17, got {args.release!r}")
    faults = Faults(
        fail_rate=args.fail_rate,
        latency=args.latency,
        truncate_rate=args.truncate_rate,
        timeout_rate=args.timeout_rate,
        seed=args.seed,
        only=args.faults_only,
    )
    if args.duplicate_every < 0:
        raise GalmetError(f"--duplicate-every must be 0 or more, got {args.duplicate_every}")
    # Take the port before the (slower) sky is built, so a busy port fails at once.
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise GalmetError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    if args.data is None:
        print(f"building a mock sky of {args.n} galaxies (seed {args.seed}) ...", file=sys.stderr)
    else:
        print(f"loading the mock sky of {args.data} ...", file=sys.stderr)
    try:
        sky = load_sky(args.data, args.n, args.seed)
        app = create_app(
            sky,
            faults=faults,
            cutout_cache=args.cutout_cache,
            off_footprint=args.off_footprint,
            duplicate_every=args.duplicate_every,
        )
    except BaseException:
        sock.close()
        raise
    print(
        f"mock SkyServer: {int(np.count_nonzero(sky.in_sample))} sample galaxies of "
        f"{len(sky.population)} spectra at http://{args.host}:{port}/{args.release}",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0
