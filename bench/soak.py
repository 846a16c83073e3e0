"""Soak the service on loopback: a mixed load for a fixed time, then the books are checked.

    python bench/soak.py [--seconds 60] [--clients 50] [--model MODEL.pt]

Starts `galmet mock-skyserver` and `galmet serve` (a fresh SQLite database, TTA 1, a
random-weight model unless --model, no SkyServer rate limit unless --skyserver-rate) as
subprocesses. A warm-up predicts a set of positions
and uploads, so that they are cached, and loads the service with the mix below for
--warmup seconds; then the server's resident memory is read and --clients clients send the
mix for --seconds:

- cached predictions by position (GET and POST) and cached uploads (most requests);
- uncached predictions: positions never asked before (cutout fetched from the mock
  SkyServer, the model run) and new uploads;
- job submissions (a few targets each, cached and uncached positions), job status polls
  and result downloads (JSON and CSV).

Then the jobs are waited for (bounded by --drain seconds) and each one's results are read:
a job is complete when it is done with one row per target, every row answered. Counted: 5xx
answers, connection errors (and other transport errors), other unexpected statuses; the
growth of the server's resident memory (/proc) from after the warm-up to the end of the load.
Prints one JSON line of figures (``latency_ms``: p50 and p99 of each kind of request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from serve import free_port, process  # bench/serve.py, beside this file

from galmet.training.mocksky import MockSky

SKY_N, SKY_SEED = 2000, 7
API = "/api/v1"
JOB_TARGETS = 4
#: The mix: (weight, kind).
MIX = [
    (40, "cached_get"),
    (10, "cached_post"),
    (12, "cached_upload"),
    (8, "new_position"),
    (5, "new_upload"),
    (5, "submit_job"),
    (8, "job_status"),
    (12, "job_results"),
]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Soak:
    """The clients' shared state: what is cached, what is fresh, the jobs, the tallies."""

    def __init__(self, url: str, positions: list, images: list[bytes], cached: int) -> None:
        self.url = url
        self.cached_positions = positions[:cached]
        self.fresh_positions = positions[cached:]  # asked once each, then cached
        self.cached_images = images[:cached]
        self.fresh_images = images[cached:]
        self.jobs: dict[str, int] = {}  # id -> targets
        self.requests: Counter = Counter()  # kind -> requests
        self.statuses: Counter = Counter()  # status code -> answers
        self.errors: Counter = Counter()  # transport error class -> count
        self.unexpected: list[str] = []  # a few examples of unexpected answers
        self.fresh_used: Counter = Counter()  # id(pool) -> items taken
        self.seconds: dict[str, list[float]] = {}  # kind -> latencies

    def pick_fresh(self, pool: list):
        """A position or upload never asked before; None once all are used."""
        if not pool:
            return None
        self.fresh_used[id(pool)] += 1
        return pool.pop()

    async def one(self, client: httpx.AsyncClient, kind: str, rng: random.Random) -> None:
        url = self.url + API
        if kind in ("cached_get", "cached_post", "new_position"):
            pos = rng.choice(self.cached_positions)
            if kind == "new_position":
                pos = self.pick_fresh(self.fresh_positions) or pos
            if kind == "cached_post":
                r = await client.post(f"{url}/predict", json={"ra": pos[0], "dec": pos[1]})
            else:
                r = await client.get(f"{url}/predict", params={"ra": pos[0], "dec": pos[1]})
            self.check(kind, r, 200)
        elif kind in ("cached_upload", "new_upload"):
            data = rng.choice(self.cached_images)
            if kind == "new_upload":
                data = self.pick_fresh(self.fresh_images) or data
            files = {"file": ("c.jpg", data, "image/jpeg")}
            self.check(kind, await client.post(f"{url}/predict/image", files=files), 200)
        elif kind == "submit_job":
            targets = [rng.choice(self.cached_positions) for _ in range(JOB_TARGETS - 1)]
            targets.append(self.pick_fresh(self.fresh_positions) or targets[0])
            body = [{"ra": ra, "dec": dec, "id": f"t{i}"} for i, (ra, dec) in enumerate(targets)]
            r = await client.post(f"{url}/jobs", json=body)
            if self.check(kind, r, 202):
                self.jobs[r.json()["id"]] = len(body)
        elif self.jobs:  # job_status, job_results
            job = rng.choice(list(self.jobs))
            if kind == "job_status":
                self.check(kind, await client.get(f"{url}/jobs/{job}"), 200)
            else:
                fmt = rng.choice(["json", "csv"])
                r = await client.get(f"{url}/jobs/{job}/results", params={"format": fmt})
                self.check(kind, r, 200)

    def check(self, kind: str, r: httpx.Response, expected: int) -> bool:
        self.requests[kind] += 1
        self.seconds.setdefault(kind, []).append(r.elapsed.total_seconds())
        self.statuses[r.status_code] += 1
        if r.status_code != expected and len(self.unexpected) < 10:
            self.unexpected.append(f"{kind}: {r.status_code} {r.text[:200]}")
        return r.status_code == expected

    async def client(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        kinds, weights = [k for _, k in MIX], [w for w, _ in MIX]
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            while time.monotonic() < until:
                kind = rng.choices(kinds, weights)[0]
                try:
                    await self.one(client, kind, rng)
                except httpx.TransportError as exc:
                    self.requests[kind] += 1
                    self.errors[type(exc).__name__] += 1

    async def run(self, clients: int, seconds: float) -> float:
        until = time.monotonic() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(self.client(k, until) for k in range(clients)))
        return time.perf_counter() - started

    def drain(self, seconds: float) -> dict:
        """Wait for every job, then read each one's results: the books on the jobs."""
        deadline = time.monotonic() + seconds
        complete, rows_missing, rows_unanswered, unfinished = 0, 0, 0, 0
        for job, n in self.jobs.items():
            status = httpx.get(f"{self.url}{API}/jobs/{job}").json()
            while status["status"] != "done" and time.monotonic() < deadline:
                time.sleep(0.5)
                status = httpx.get(f"{self.url}{API}/jobs/{job}").json()
            if status["status"] != "done":
                unfinished += 1
                continue
            rows = httpx.get(f"{self.url}{API}/jobs/{job}/results?format=json").json()
            missing = n - len(rows)
            unanswered = sum(r["status"] != "done" or r["oh_p50"] is None for r in rows)
            rows_missing += missing
            rows_unanswered += unanswered
            complete += missing == 0 and unanswered == 0
        return {
            "jobs": len(self.jobs),
            "jobs_complete": complete,
            "jobs_unfinished": unfinished,
            "job_rows_missing": rows_missing,
            "job_rows_unanswered": rows_unanswered,
        }


def latencies(seconds: dict[str, list[float]]) -> dict:
    """p50 and p99 (ms) of each kind of request."""
    import numpy as np

    return {
        kind: [round(float(np.percentile(v, q)) * 1000, 1) for q in (50, 99)]
        for kind, v in sorted(seconds.items())
    }


def warm(url: str, soak: Soak) -> None:
    """Every position and upload of the cached set predicted (so cached from now on)."""
    for ra, dec in soak.cached_positions:
        httpx.get(f"{url}{API}/predict", params={"ra": ra, "dec": dec}, timeout=120)
    for data in soak.cached_images:
        files = {"file": ("c.jpg", data, "image/jpeg")}
        httpx.post(f"{url}{API}/predict/image", files=files, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: random weights)")
    parser.add_argument("--seconds", type=float, default=60, help="the measured load (60)")
    parser.add_argument("--warmup", type=float, default=10, help="load before measuring (10)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--cached", type=int, default=50, help="positions/uploads cached first")
    parser.add_argument("--fresh", type=int, default=1500, help="uncached positions available")
    parser.add_argument(
        "--skyserver-rate",
        default="0",
        help="GALMET_SKYSERVER_RATE of the service (0: no limit; the default 10/s, polite to "
        "the real SDSS, would hold uncached requests in its queue for seconds)",
    )
    parser.add_argument("--drain", type=float, default=300, help="most seconds to wait for jobs")
    args = parser.parse_args()

    from galmet.model import Checkpoint
    from galmet.predictor import fetch_geometry

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from jobs import random_model  # bench/jobs.py

            args.model = random_model(Path(tmp) / "random.pt")
        size, scale = fetch_geometry(Checkpoint.load(args.model))
        sky = MockSky(SKY_N, SKY_SEED)
        cat = sky.catalog()
        n = min(len(cat), args.cached + args.fresh)
        positions = [(float(r["ra"]), float(r["dec"])) for r in cat[:n]]
        rng = random.Random(0)
        rng.shuffle(positions)
        images = [sky.cutout_jpeg(ra, dec, scale, size, size) for ra, dec in positions[:200]]
        figures = soak(args, Path(tmp), positions, images)
    print(json.dumps(figures))


def soak(args: argparse.Namespace, tmp: Path, positions: list, images: list[bytes]) -> dict:
    sky_port, port = free_port(), free_port()
    sky_url = f"http://127.0.0.1:{sky_port}/dr17"
    mock = [sys.executable, "-m", "galmet", "mock-skyserver", "--port", str(sky_port)]
    mock += ["--n", str(SKY_N), "--seed", str(SKY_SEED)]
    url = f"http://127.0.0.1:{port}"
    env = {
        "GALMET_MODEL": str(args.model),
        "GALMET_SKYSERVER_URL": sky_url,
        "GALMET_DATABASE_URL": f"sqlite:///{tmp}/soak.sqlite3",
        "GALMET_DEVICE": "cpu",
        "GALMET_TTA": "1",
        "GALMET_SKYSERVER_RATE": args.skyserver_rate,
    }
    serve = [sys.executable, "-m", "galmet", "serve", "--port", str(port), "--log-level", "error"]
    with (
        process(mock, f"http://127.0.0.1:{sky_port}/mock/stats"),
        process(serve, f"{url}{API}/healthz", env) as server,
    ):
        s = Soak(url, positions, images, args.cached)
        warm(url, s)
        asyncio.run(s.run(args.clients, args.warmup))
        rss_start = rss_bytes(server.pid)
        for tally in (s.requests, s.statuses, s.errors, s.unexpected, s.fresh_used, s.seconds):
            tally.clear()  # the measured window only
        seconds = asyncio.run(s.run(args.clients, args.seconds))
        rss_end = rss_bytes(server.pid)
        books = s.drain(args.drain)
        with contextlib.suppress(OSError):
            rss_after_jobs = rss_bytes(server.pid)
    total = sum(s.requests.values())
    return {
        "seconds": round(seconds, 1),
        "clients": args.clients,
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "by_kind": dict(s.requests),
        "uncached_positions_asked": s.fresh_used[id(s.fresh_positions)],
        "uncached_uploads_sent": s.fresh_used[id(s.fresh_images)],
        "statuses": {str(k): v for k, v in sorted(s.statuses.items())},
        "server_errors_5xx": sum(v for k, v in s.statuses.items() if k >= 500),
        "connection_errors": sum(s.errors.values()),
        "transport_errors": dict(s.errors),
        "unexpected_examples": s.unexpected[:5],
        "latency_ms": latencies(s.seconds),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
        "rss_after_jobs_mb": round(rss_after_jobs / 2**20, 1),
        **books,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    main()
