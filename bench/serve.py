"""Benchmark the prediction service on loopback. Run by hand (wrk: ``apt-get install -y wrk``):

    python bench/serve.py [--model MODEL.pt] [--part all | cached workers uploads]

Starts `galmet mock-skyserver` and `galmet serve` as subprocesses (a fresh SQLite database
each time; a random-weight model unless --model: a cached answer does not depend on it) and
measures:

1. ``cached``: cached answers against the bare stack, side by side in one run. The bare
   stack is FastAPI on the same uvicorn returning the same prediction JSON
   (``bench/bare_app.py``); for each of GET /predict, POST /predict (JSON body) and a cached
   upload (multipart, found by SHA-256), wrk loads the bare app's same route, then galmet's,
   for --seconds at --connections (requests/s, p50, p99, and galmet's ratio to bare); and
   cached GETs from a service keeping no answers in memory (the database path);
2. ``workers``: cached GET /predict with ``galmet serve --workers N``, N = 1 and 2, over
   kept-alive connections and with a new connection per request;
3. ``uploads`` (httpx clients): uncached predictions by coordinates per second, image uploads
   per second with TTA 1 and 8 at 32 clients, and the gain of micro-batching (batch size 1).

Prints a table per part and a final JSON line. Every run is bounded in count and time.
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
from wrk import multipart, request_script, run_wrk  # bench/wrk.py, beside this file

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
def process(args: list[str], url: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until_up(url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def galmet_service(model: Path, skyserver: str, workers: int = 1, **settings: str) -> Iterator[str]:
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
        args += ["--workers", str(workers)] if workers > 1 else []
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


UPLOAD = "/api/v1/predict/image"


def warm_cache(url: str, position: tuple[float, float], image: bytes) -> dict:
    """Predict ``position`` and ``image`` until they are cached answers; the cached GET's JSON."""
    ra, dec = position
    for _ in range(3):  # the first computes, the next come from the database, then from memory
        got = httpx.get(f"{url}/api/v1/predict", params={"ra": ra, "dec": dec}, timeout=120)
        got.raise_for_status()
        httpx.post(f"{url}/api/v1/predict", json={"ra": ra, "dec": dec}).raise_for_status()
        files = {"file": ("c.jpg", image, "image/jpeg")}
        httpx.post(f"{url}{UPLOAD}", files=files, timeout=120).raise_for_status()
    answer = got.json()
    if not answer["cached"]:
        raise RuntimeError("the warmed-up answer is not cached")
    return answer


def cached_requests(position: tuple[float, float], image: bytes) -> dict[str, tuple]:
    """(path, wrk script) of each cached request measured."""
    ra, dec = position
    body, ctype = multipart("file", "c.jpg", image, "image/jpeg")
    coordinates = json.dumps({"ra": ra, "dec": dec}).encode()
    return {
        "GET /predict": (f"/api/v1/predict?ra={ra}&dec={dec}", None),
        "POST /predict": (
            "/api/v1/predict",
            request_script("POST", coordinates, "application/json"),
        ),
        "POST /predict/image": (UPLOAD, request_script("POST", body, ctype)),
    }


def cached_part(model: Path, sky_url: str, position, image: bytes, args) -> dict:
    """Cached answers against the bare stack, route by route, in one run; and cached GETs
    from the database alone (no answers kept in memory: GALMET_HOT_ANSWERS=0)."""
    rows: dict = {}
    with (
        galmet_service(model, sky_url, tta="1") as url,
        galmet_service(model, sky_url, tta="1", hot_answers="0") as db_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        answer = Path(tmp) / "answer.json"
        answer.write_text(json.dumps(warm_cache(url, position, image)))
        warm_cache(db_url, position, image)
        port = free_port()
        bare = f"http://127.0.0.1:{port}"
        app = [sys.executable, str(Path(__file__).with_name("bare_app.py")), "--port", str(port)]
        with process(app + ["--body", str(answer)], f"{bare}/api/v1/healthz"):
            for name, (path, script) in cached_requests(position, image).items():
                b = run_wrk(bare + path, args.seconds, args.connections, script=script)
                rows[name] = compared(
                    b, run_wrk(url + path, args.seconds, args.connections, script=script)
                )
                if name == "GET /predict":
                    g = run_wrk(db_url + path, args.seconds, args.connections)
                    rows["GET, database only"] = compared(b, g)
    print(
        f"\ncached answers vs the bare stack (wrk, {args.connections} connections, "
        f"{args.seconds:g} s each)"
    )
    print(
        f"{'request':22}{'bare req/s':>11}{'p99 ms':>8}{'galmet req/s':>13}{'p99 ms':>8}"
        f"{'ratio':>7}{'p99 ratio':>10}{'errors':>7}"
    )
    for name, r in rows.items():
        b, g = r["bare"], r["galmet"]
        print(
            f"{name:22}{b['req_per_s']:11.0f}{b['p99_ms']:8.1f}{g['req_per_s']:13.0f}"
            f"{g['p99_ms']:8.1f}{r['throughput_ratio']:7.2f}{r['p99_ratio']:10.2f}"
            f"{b['errors'] + g['errors']:7d}"
        )
    return rows


def compared(bare, galmet) -> dict:
    """A row of the cached table: both runs and galmet's ratios to the bare stack."""
    return {
        "bare": bare.row(),
        "galmet": galmet.row(),
        "throughput_ratio": round(galmet.requests_per_s / bare.requests_per_s, 3),
        "p99_ratio": round(galmet.p99_ms / bare.p99_ms, 3),
    }


def workers_part(model: Path, sky_url: str, position, image: bytes, args) -> dict:
    """Cached GET /predict with one and with two server processes: over wrk's kept-alive
    connections, and with a new connection per request. The processes share one listening
    socket and the kernel hands each new connection to whichever is waiting in accept, so a
    few long-lived connections can split unevenly (measured: 45 of 50 to one process); new
    connections spread."""
    rows: dict = {}
    path = cached_requests(position, image)["GET /predict"][0]
    close = 'wrk.headers["Connection"] = "close"\n'
    for n in (1, 2):
        with galmet_service(model, sky_url, workers=n, tta="1") as url:
            for _ in range(2 * n):  # every process: its cache warm, its engine started
                warm_cache(url, position, image)
            rows[f"{n} keep-alive"] = run_wrk(url + path, args.seconds, args.connections).row()
            rows[f"{n} new connections"] = run_wrk(
                url + path, args.seconds, args.connections, script=close
            ).row()
    print(f"\ncached GET /predict by server processes (wrk, {args.connections} connections)")
    for key, r in rows.items():
        n, how = key.split(" ", 1)
        print(
            f"galmet serve --workers {n}, {how:16} {r['req_per_s']:8.0f} req/s  "
            f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}"
        )
    return rows


def uploads_part(model: Path, sky_url: str, positions, images, args) -> dict:
    """Uncached predictions, uploads at TTA 1 and 8, and the gain of micro-batching."""
    figures: dict = {}
    with galmet_service(model, sky_url, tta="1") as url:
        seconds, _, err = coordinates_run(url, positions, args.clients)
        figures["uncached_coords_per_s"] = len(positions) / seconds
        figures["uncached_errors"] = err
    for tta in (1, 8):
        with galmet_service(model, sky_url, tta=str(tta)) as url:
            seconds, _, err = upload_run(url, images, 32)
            figures[f"upload_tta{tta}_per_s"] = len(images) / seconds
            figures[f"upload_tta{tta}_errors"] = err
    with galmet_service(model, sky_url, tta="1", batch_size="1") as url:
        seconds, _, err = upload_run(url, images, 32)
        figures["upload_tta1_unbatched_per_s"] = len(images) / seconds
    f = figures
    f["microbatching_gain"] = f["upload_tta1_per_s"] / f["upload_tta1_unbatched_per_s"]
    print(f"\nuncached predictions by coordinates   {f['uncached_coords_per_s']:8.1f} /s")
    print(f"image uploads, TTA 1, 32 clients       {f['upload_tta1_per_s']:8.1f} /s")
    print(f"image uploads, TTA 8, 32 clients       {f['upload_tta8_per_s']:8.1f} /s")
    print(f"image uploads, TTA 1, batch size 1     {f['upload_tta1_unbatched_per_s']:8.1f} /s")
    print(f"micro-batching gain (32 clients)       {f['microbatching_gain']:8.2f} x")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint to serve (default: random weights)")
    parser.add_argument(
        "--part",
        nargs="+",
        choices=["all", "cached", "workers", "uploads"],
        default=["all"],
        help="what to measure (all)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="each wrk run (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--clients", type=int, default=50, help="clients for uncached requests")
    parser.add_argument("--n", type=int, default=200, help="galaxies (uncached requests)")
    args = parser.parse_args()

    from galmet.model import Checkpoint
    from galmet.predictor import fetch_geometry

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from jobs import random_model  # bench/jobs.py

            args.model = random_model(Path(tmp) / "random.pt")
        run(args, *fetch_geometry(Checkpoint.load(args.model)))


def run(args: argparse.Namespace, size: int, scale: float) -> None:
    sky = MockSky(SKY_N, SKY_SEED)
    cat = sky.catalog()[: args.n]
    positions = [(float(r["ra"]), float(r["dec"])) for r in cat]
    parts = {"cached", "workers", "uploads"} if "all" in args.part else set(args.part)
    n_images = args.n if "uploads" in parts else 1
    print(f'rendering {n_images} upload images ({size} px at {scale}"/px) ...', flush=True)
    images = [sky.cutout_jpeg(ra, dec, scale, size, size) for ra, dec in positions[:n_images]]
    figures: dict = {"model": str(args.model), "cpu_count": os.cpu_count()}
    figures["load_average"] = os.getloadavg()

    port = free_port()
    sky_url = f"http://127.0.0.1:{port}/dr17"
    mock = [sys.executable, "-m", "galmet", "mock-skyserver", "--port", str(port)]
    mock += ["--n", str(SKY_N), "--seed", str(SKY_SEED)]
    with process(mock, f"http://127.0.0.1:{port}/mock/stats"):
        if "cached" in parts:
            figures["cached"] = cached_part(args.model, sky_url, positions[0], images[0], args)
        if "workers" in parts:
            figures["workers"] = workers_part(args.model, sky_url, positions[0], images[0], args)
        if "uploads" in parts:
            figures["n"] = args.n
            figures |= uploads_part(args.model, sky_url, positions, images, args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
