"""Benchmark ``galmet download`` against the mock SkyServer with added latency. Run by hand:

    python bench/download.py [--n 200] [--latency 0.1]

Downloads the same N cutouts into fresh directories at concurrency 1 and at the default
concurrency (both under the default rate limit), and at the default concurrency with no
rate limit, then prints cutouts/second side by side and a final JSON line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from galmet.skyserver import DEFAULT_CONCURRENCY, DEFAULT_RATE, SkyServerClient
from galmet.training.download import DownloadSummary, download_cutouts
from galmet.training.mock_skyserver import Faults, create_app, serve_in_thread
from galmet.training.mocksky import MockSky


def run_once(url: str, catalog, out: Path, concurrency: int, rate: float | None) -> DownloadSummary:
    async def go() -> DownloadSummary:
        async with SkyServerClient(url, concurrency=concurrency, rate=rate) as client:
            return await download_cutouts(catalog, out, client, progress=False)

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="cutouts to fetch (default 200)")
    parser.add_argument("--latency", type=float, default=0.1, help="added seconds per answer")
    args = parser.parse_args()

    sky = MockSky(args.n, seed=0)
    catalog = sky.catalog()[: args.n]
    setups = {
        f"concurrency 1, rate {DEFAULT_RATE:g}/s": (1, DEFAULT_RATE),
        f"concurrency {DEFAULT_CONCURRENCY}, rate {DEFAULT_RATE:g}/s": (
            DEFAULT_CONCURRENCY,
            DEFAULT_RATE,
        ),
        f"concurrency {DEFAULT_CONCURRENCY}, no rate limit": (DEFAULT_CONCURRENCY, None),
    }
    results = []
    app = create_app(sky, faults=Faults(latency=args.latency))
    with serve_in_thread(app) as url, tempfile.TemporaryDirectory() as tmp:
        print(f"{args.n} cutouts, mock SkyServer with {args.latency * 1000:.0f} ms added latency")
        for i, (label, (concurrency, rate)) in enumerate(setups.items()):
            summary = run_once(url, catalog, Path(tmp) / str(i), concurrency, rate)
            per_second = summary.fetched / summary.seconds
            print(f"  {label:<32} {summary.seconds:6.1f} s  {per_second:6.1f} cutouts/s")
            results.append(
                {
                    "setup": label,
                    "concurrency": concurrency,
                    "rate": rate,
                    "fetched": summary.fetched,
                    "failed": summary.failed,
                    "seconds": round(summary.seconds, 2),
                    "cutouts_per_s": round(per_second, 2),
                }
            )
    print(json.dumps({"n": args.n, "latency_s": args.latency, "runs": results}))


if __name__ == "__main__":
    main()
