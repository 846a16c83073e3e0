"""The mock-sky demo model: what the service runs when no ``GALMET_MODEL`` is configured.

A small ResNet-34 trained on the CPU on simulated galaxies (``training.simulate``), built
once and cached as ``settings.cache_dir / "demo-<its sha256>.pt"``, found through
``demo-settings-<hash>.json``; that hash covers the demo settings and the recipe below, so
changing either builds a new file. The checkpoint's
config says ``"demo": True`` and carries ``DEMO_NOTICE``, for the API to show.

The images are made as the service will fetch them from SkyServer, 128 px cutouts at
0.296″/px, and training resizes them to ``demo_size`` with the one preprocessing function;
the service then resizes its fetched cutouts the same way.

Concurrent service starts build it once: a file lock serialises the builders, the build
happens in a temporary folder beside the cache, and the finished file is moved into place
with an atomic rename, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from filelock import FileLock  # a dependency of torch; flock-based, so no stale locks

from galmet.app.core.config import Settings
from galmet.files import atomic_write
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import TTA_CPU

DEMO_NOTICE = "mock-sky demo model: trained on simulated galaxies, not for science"

#: Everything about the build besides the settings; part of the cache key. Bump
#: ``version`` when the recipe changes in a way these values do not show.
RECIPE = {
    "version": 3,  # 3: the checkpoint carries the OOD statistics
    "seed": 0,
    "image_size": 128,  # what the service fetches from SkyServer …
    "pixel_scale": 0.296,  # … at this scale (DESIGN.md)
    "optimizer": "adamw",  # measured better than SGD from scratch on the mock
    "lr": 1e-3,
    "batch_size": 64,
    "frozen_epochs": 1,
    # Test metrics at TTA 1 and at the level a CPU serves (sigma is calibrated at every
    # level anyway); /models shows the served level's.
    "tta": TTA_CPU,
}

# Measured on this project's 2-core CPU (idle apart from light jobs), for the "~N min"
# estimate: a fresh build of 3000 galaxies, 32 px, 6 epochs took 79 s: rendering 12 s
# (0.004 s/galaxy), 9.7 s per epoch of training at 32 px (0.0032 s/galaxy, scaling with the
# pixel count), and ~15 s of imports, sky set-up, sigma calibration and test metrics.
#
# What the demo settings buy (test RMSE of oh_p50 on 1000 held-out mock galaxies whose
# oh_p50 has std 0.133 dex; TTA 1 / TTA 4; batch 64; seconds on one CPU thread shared with
# other jobs, so about twice what an idle 2-core build takes):
#   1500 galaxies, 48 px, 4 epochs: 0.127 / 0.117 (109 s) — barely beats the mean
#   1500 galaxies, 48 px, 4 epochs, batch 32: 0.106 / 0.099 (114 s)
#   3000 galaxies, 48 px, 4 epochs: 0.093 / 0.088 (191 s)
#   3000 galaxies, 32 px, 6 epochs: 0.090 / 0.086 (132 s); the same fresh on 2 idle cores:
#                                    0.094 / 0.086 (79 s)
#   3000 galaxies, 32 px, 8 epochs, batch 32: 0.090 / 0.088 (190 s)
#   4000 galaxies, 32 px, 6 epochs, batch 32: 0.091 / 0.091 (195 s)
# so 3000 / 32 px / 6 epochs: well under the 3 minutes, and more data or epochs did not help.
SETUP_SECONDS = 15.0
RENDER_SECONDS = 0.004
TRAIN_SECONDS_32PX = 0.0032


def demo_key(settings: Settings) -> dict:
    """The settings and recipe that determine the demo model."""
    return {
        "galaxies": settings.demo_galaxies,
        "size": settings.demo_size,
        "epochs": settings.demo_epochs,
    } | RECIPE


def demo_index(settings: Settings) -> Path:
    """The file that names the demo model built for these settings (``demo-settings-<hash of
    the settings>.json``)."""
    text = json.dumps(demo_key(settings), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(settings.cache_dir) / f"demo-settings-{digest}.json"


def demo_path(settings: Settings) -> Path | None:
    """The cached demo model for these settings, or None before it is built. The file is
    named by its own SHA-256 (``demo-<sha256[:16]>.pt``), the model version the service
    reports: one identity everywhere."""
    index = demo_index(settings)
    try:
        path = index.parent / json.loads(index.read_text())["file"]
    except (OSError, ValueError, KeyError):
        return None
    return path if path.exists() else None


def estimated_minutes(settings: Settings) -> float:
    """Rough build time on a 2-core CPU."""
    epoch = TRAIN_SECONDS_32PX * (settings.demo_size / 32) ** 2
    per_galaxy = RENDER_SECONDS + epoch * settings.demo_epochs
    return (SETUP_SECONDS + settings.demo_galaxies * per_galaxy) / 60


def is_demo(checkpoint: Checkpoint | str | Path) -> bool:
    """Whether a checkpoint (or checkpoint file) is a mock-sky demo model."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint.load(Path(checkpoint))
    return bool((checkpoint.config or {}).get("demo"))


def demo_checkpoint(settings: Settings, progress: bool = True) -> Path:
    """The path of the demo model for ``settings``, built first if not cached.

    Blocks for minutes on a first build: call it before serving, or from a thread.
    """
    path = demo_path(settings)
    if path is not None:
        return path
    index = demo_index(settings)
    index.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(index.with_suffix(".lock"))):
        path = demo_path(settings)
        if path is not None:  # another process built it while we waited
            return path
        if progress:
            print(
                f"building the mock-sky demo model (one time, "
                f"~{max(1, round(estimated_minutes(settings)))} min) …",
                file=sys.stderr,
                flush=True,
            )
        quiet = contextlib.ExitStack()
        if not progress:
            devnull = quiet.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            quiet.enter_context(contextlib.redirect_stdout(devnull))
            quiet.enter_context(contextlib.redirect_stderr(devnull))
        with quiet, tempfile.TemporaryDirectory(prefix=".demo-build-", dir=index.parent) as tmp:
            started = time.perf_counter()
            ck = _build(settings, Path(tmp))
            ck.metrics["build_seconds"] = time.perf_counter() - started
            staged = Path(tmp) / "demo.pt"
            ck.save(staged)
            sha = file_sha256(staged)
            path = index.parent / f"demo-{sha[:16]}.pt"
            os.replace(staged, path)  # same folder, so atomic
            atomic_write(index, json.dumps({"file": path.name, "sha256": sha}) + "\n")
        if progress:
            print(f"demo model ready: {path}", file=sys.stderr, flush=True)
    return path


def _build(settings: Settings, work: Path) -> Checkpoint:
    """Simulate the mock sky into ``work``, train on it, and mark the result as a demo."""
    # Training code is imported here: a service with a real model never needs it.
    from galmet.training.simulate import simulate
    from galmet.training.train import TrainConfig, train

    r = RECIPE
    data = work / "mock"
    simulate(
        settings.demo_galaxies,
        data,
        seed=r["seed"],
        size=r["image_size"],
        scale=r["pixel_scale"],
        workers=os.cpu_count() or 1,
    )
    # One frozen (head-only) epoch, then one cosine cycle over the rest: a single SGDR cycle
    # fits any epoch count exactly, and restarts do not pay off in a few epochs.
    frozen = r["frozen_epochs"] if settings.demo_epochs > 1 else 0
    cfg = TrainConfig(
        data=str(data),
        out=str(work / "train" / "demo.pt"),
        size=settings.demo_size,
        pixel_scale=r["pixel_scale"],
        optimizer=r["optimizer"],
        lr=r["lr"],
        batch_size=r["batch_size"],
        frozen_epochs=frozen,
        cycles=1,
        cycle_len=max(1, settings.demo_epochs - frozen),
        seed=r["seed"],
        # A GPU, when the service has one, builds it in seconds instead of minutes.
        device=settings.device if settings.device in ("auto", "cpu", "cuda") else "auto",
        tta=r["tta"],
    )
    ck = train(cfg)
    description = (
        f"mock sky: galmet simulate --n {settings.demo_galaxies} --seed {r['seed']} "
        f"--size {r['image_size']} --scale {r['pixel_scale']}"
    )
    ck.data = description
    ck.config |= {"data": description, "out": "", "demo": True, "notice": DEMO_NOTICE}
    ck.config["demo_settings"] = demo_key(settings)
    return ck
