"""Benchmark the prediction service on loopback. Run by hand:

    python bench/serve.py --model MODEL.pt [--clients 50] [--n 200]

Starts `galmet mock-skyserver` and `galmet serve` as subprocesses (a fresh SQLite database
each time) and measures, with an async httpx client:

1. uncached predictions by coordinates per second (cutout fetched from the mock SkyServer);
2. cached GET /predict: p50/p99 latency and requests per second at --clients;
3. image uploads per second with TTA 1 and TTA 8 at 32 clients;
4. the gain of micro-batching: uploads per second with batching vs batch size 1, 32 clients.

Prints a table and a final JSON line. Request loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from galmet.training.mocksky import MockSky

SKY_N, SKY_SEED = 2000, 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def process(args: list[str], url: str, env: dict | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until_up(url, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def galmet_service(model: Path, skyserver: str, **settings: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "GALMET_MODEL": str(model),
            "GALMET_SKYSERVER_URL": skyserver,
            "GALMET_DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3",
            "GALMET_DEVICE": "cpu",
        } | {f"GALMET_{k.upper()}": v for k, v in settings.items()}
        args = [sys.executable, "-m", "galmet", "serve", "--port", str(port)]
        with process(args + ["--log-level", "warning"], f"{url}/api/v1/healthz", env):
            yield url


async def load(requests: list, clients: int, send) -> tuple[float, list[float], int]:
    """Send ``requests`` with ``clients`` concurrent workers; (seconds, latencies, errors)."""
    latencies, errors = [], 0
    todo = iter(requests)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for item in todo:
                t = time.perf_counter()
                response = await send(client, item)
                latencies.append(time.perf_counter() - t)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies, errors


def coordinates_run(url: str, positions: list, clients: int):
    async def send(client, pos):
        return await client.get(f"{url}/api/v1/predict", params={"ra": pos[0], "dec": pos[1]})

    return asyncio.run(load(positions, clients, send))


def upload_run(url: str, images: list[bytes], clients: int):
    async def send(client, data):
        return await client.post(
            f"{url}/api/v1/predict/image", files={"file": ("c.jpg", data, "image/jpeg")}
        )

    return asyncio.run(load(images, clients, send))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to serve")
    parser.add_argument("--clients", type=int, default=50, help="clients for the cached run")
    parser.add_argument("--n", type=int, default=200, help="galaxies (uncached requests)")
    parser.add_argument("--cached-requests", type=int, default=2000)
    args = parser.parse_args()

    from galmet.model import Checkpoint
    from galmet.predictor import fetch_geometry

    size, scale = fetch_geometry(Checkpoint.load(args.model))
    sky = MockSky(SKY_N, SKY_SEED)
    cat = sky.catalog()[: args.n]
    positions = [(float(r["ra"]), float(r["dec"])) for r in cat]
    print(f'rendering {args.n} upload images ({size} px at {scale}"/px) ...', flush=True)
    images = [sky.cutout_jpeg(ra, dec, scale, size, size) for ra, dec in positions]
    figures: dict = {"model": str(args.model), "n": args.n, "cpu_count": os.cpu_count()}

    port = free_port()
    sky_url = f"http://127.0.0.1:{port}/dr17"
    mock = [sys.executable, "-m", "galmet", "mock-skyserver", "--port", str(port)]
    mock += ["--n", str(SKY_N), "--seed", str(SKY_SEED)]
    with process(mock, f"http://127.0.0.1:{port}/mock/stats"):
        with galmet_service(args.model, sky_url, tta="1") as url:
            seconds, lat, err = coordinates_run(url, positions, args.clients)
            figures["uncached_coords_per_s"] = len(positions) / seconds
            figures["uncached_errors"] = err
            repeats = [positions[i % len(positions)] for i in range(args.cached_requests)]
            seconds, lat, err = coordinates_run(url, repeats, args.clients)
            figures["cached_clients"] = args.clients
            figures["cached_requests_per_s"] = len(repeats) / seconds
            figures["cached_p50_ms"] = float(np.percentile(lat, 50) * 1000)
            figures["cached_p99_ms"] = float(np.percentile(lat, 99) * 1000)
            figures["cached_errors"] = err
        for tta in (1, 8):
            with galmet_service(args.model, sky_url, tta=str(tta)) as url:
                seconds, _, err = upload_run(url, images, 32)
                figures[f"upload_tta{tta}_per_s"] = len(images) / seconds
                figures[f"upload_tta{tta}_errors"] = err
        with galmet_service(args.model, sky_url, tta="1", batch_size="1") as url:
            seconds, _, err = upload_run(url, images, 32)
            figures["upload_tta1_unbatched_per_s"] = len(images) / seconds
    figures["microbatching_gain"] = (
        figures["upload_tta1_per_s"] / figures["upload_tta1_unbatched_per_s"]
    )

    f = figures
    print(f"uncached predictions by coordinates   {f['uncached_coords_per_s']:8.1f} /s")
    print(
        f"cached GET /predict, {f['cached_clients']} clients        "
        f"{f['cached_requests_per_s']:8.1f} req/s  p50 {f['cached_p50_ms']:.1f} ms  "
        f"p99 {f['cached_p99_ms']:.1f} ms"
    )
    print(f"image uploads, TTA 1, 32 clients       {f['upload_tta1_per_s']:8.1f} /s")
    print(f"image uploads, TTA 8, 32 clients       {f['upload_tta8_per_s']:8.1f} /s")
    print(f"image uploads, TTA 1, batch size 1     {f['upload_tta1_unbatched_per_s']:8.1f} /s")
    print(f"micro-batching gain (32 clients)       {f['microbatching_gain']:8.2f} x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
