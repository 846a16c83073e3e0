"""Benchmark batch jobs end to end. Run by hand:

    python bench/jobs.py [--n 5000] [--model MODEL.pt] [--tta 4] [--chunk-size 128]

Starts `galmet mock-skyserver` (a mock sky of N galaxies, cutouts rendered on request) and,
for each mode, a fresh PostgreSQL database (SQLite if PostgreSQL does not answer), `galmet
serve`, and for the Celery modes `galmet worker` subprocesses on a private Redis database.
Submits one CSV job of N targets and times it from the POST until the job is done:

1. embedded: no broker, the API runs the chunks in-process;
2. Celery, one worker process;
3. Celery, two worker processes (``--concurrency 2``);
4. the same job resubmitted to the last service: every target from the cache.

Everything shares this machine's cores. The mock SkyServer renders cutouts with GalSim, far
slower than the pipeline under test, so it keeps what it rendered (``--cutout-cache``) and a
warm-up pass renders every cutout once before the timed runs (its rate is printed too); each
mode still fetches every cutout over HTTP into a fresh database. The model has random
weights unless --model is given (speed does not depend on them). Prints a table and a final
JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa
from serve import free_port, process  # bench/serve.py, beside this file

from galmet.training.mocksky import MockSky

SKY_SEED = 11
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/13"


def random_model(path: Path) -> Path:
    """A random-weight ResNet-34 checkpoint: 32 px input, cutouts of 64 px at 0.396″/px."""
    import torch

    from galmet.model import Checkpoint, GalmetNet

    torch.manual_seed(0)
    net = GalmetNet(2)
    Checkpoint(
        outputs=["oh_p50", "lgm_tot_p50"],
        target_mean=[9.0, 10.0],
        target_std=[0.1, 0.5],
        input_size=32,
        bands="gri",
        model_states=[net.state_dict()],
        config={"image_size": 64, "pixel_scale": 0.396},
        sigma_scale={1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0},
    ).save(path)
    return path


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; a SQLite file if none answers."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    name = f"galmet_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def workers(env: dict, concurrency: int, log: Path) -> Iterator[None]:
    """``galmet worker --concurrency N``, returned once every pool process has its model."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "galmet", "worker", "--concurrency", str(concurrency)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while log.read_text(errors="replace").count("ready: model") < concurrency:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def warm_up(sky_url: str, rows, model: Path) -> float:
    """Have the mock render every target's cutout once (as the service will ask for it);
    returns cutouts rendered per second."""
    import asyncio

    from galmet.model import Checkpoint
    from galmet.predictor import fetch_geometry
    from galmet.skyserver import SkyServerClient

    size, scale = fetch_geometry(Checkpoint.load(model))

    async def fetch_all() -> None:
        async with SkyServerClient(sky_url, concurrency=8, rate=None) as client:
            await asyncio.gather(
                *(
                    client.cutout(float(r["ra"]), float(r["dec"]), scale=scale,
                                  width=size, height=size)
                    for r in rows
                )
            )  # fmt: skip

    start = time.perf_counter()
    asyncio.run(fetch_all())
    return len(rows) / (time.perf_counter() - start)


def run_job(url: str, csv_text: str) -> dict:
    """Submit the CSV, poll until done; seconds and counts."""
    with httpx.Client(timeout=120) as client:
        start = time.perf_counter()
        r = client.post(f"{url}/api/v1/jobs", files={"file": ("t.csv", csv_text, "text/csv")})
        r.raise_for_status()
        job = r.json()
        while job["status"] != "done":
            time.sleep(0.25)
            job = client.get(job["links"]["self"]).json()
        seconds = time.perf_counter() - start
    n = job["n_targets"]
    if job["counts"]["done"] != n:
        raise RuntimeError(f"not every target was predicted: {job['counts']}")
    return {"seconds": seconds, "targets_per_s": n / seconds, "counts": job["counts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="targets in the job (5000)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: random weights)")
    parser.add_argument("--tta", default="4", help="TTA copies (4, the CPU default)")
    parser.add_argument("--chunk-size", default="128", help="targets per chunk (128)")
    args = parser.parse_args()

    sky = MockSky(args.n, seed=SKY_SEED)
    rows = sky.catalog()
    csv_text = "id,ra,dec\n" + "".join(
        f"{int(r['objID'])},{float(r['ra'])!r},{float(r['dec'])!r}\n" for r in rows[: args.n]
    )
    n = csv_text.count("\n") - 1
    print(f"{n} targets; mock sky of {len(rows)} galaxies", file=sys.stderr)

    import redis

    redis.Redis.from_url(REDIS).flushdb()
    figures: dict = {"n": n, "tta": int(args.tta), "chunk_size": int(args.chunk_size)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or random_model(tmp / "random.pt")
        sky_port = free_port()
        sky_url = f"http://127.0.0.1:{sky_port}/dr17"
        sky_cmd = [sys.executable, "-m", "galmet", "mock-skyserver", "--n", str(args.n)]
        sky_cmd += ["--seed", str(SKY_SEED), "--port", str(sky_port)]
        sky_cmd += ["--cutout-cache", str(args.n + 100)]
        with process(sky_cmd, f"http://127.0.0.1:{sky_port}/mock/stats"):
            figures["mock_render_per_s"] = warm_up(sky_url, rows[: args.n], model)
            print(
                f"mock SkyServer rendered {figures['mock_render_per_s']:.1f} cutouts/s",
                file=sys.stderr,
            )
            for mode, concurrency in (("embedded", 0), ("celery_1", 1), ("celery_2", 2)):
                with database() as db_url:
                    env = {
                        "GALMET_MODEL": str(model),
                        "GALMET_SKYSERVER_URL": sky_url,
                        "GALMET_DATABASE_URL": db_url,
                        "GALMET_DEVICE": "cpu",
                        "GALMET_TTA": args.tta,
                        "GALMET_JOB_CHUNK_SIZE": args.chunk_size,
                        "GALMET_SKYSERVER_RATE": "0",  # the mock needs no politeness
                        "GALMET_CACHE_DIR": str(tmp),
                    }
                    if concurrency:
                        env["GALMET_BROKER_URL"] = REDIS
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    serve = [sys.executable, "-m", "galmet", "serve", "--port", str(port)]
                    serve += ["--log-level", "warning"]
                    pool = (
                        workers(env, concurrency, tmp / f"{mode}.log")
                        if concurrency
                        else contextlib.nullcontext()
                    )
                    with process(serve, f"{url}/api/v1/healthz", env), pool:
                        figures[mode] = run_job(url, csv_text)
                        print(mode, figures[mode], file=sys.stderr)
                        if mode == "celery_2":
                            figures["cached_resubmission"] = run_job(url, csv_text)

    print(f"\n{n}-target job, TTA {args.tta}, chunks of {args.chunk_size} (seconds, targets/s):")
    print(f"  (mock SkyServer warm-up: {figures['mock_render_per_s']:.1f} renders/s)")
    for mode in ("embedded", "celery_1", "celery_2", "cached_resubmission"):
        f = figures[mode]
        print(f"  {mode:20s} {f['seconds']:8.1f} s  {f['targets_per_s']:8.1f} /s  {f['counts']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
