"""``galmet simulate``: write a mock SDSS sample to a folder.

``DIR/catalog.csv`` has the columns the real catalog query returns, ``DIR/images/{objID}.jpg``
the cutouts (the same bytes the mock SkyServer serves for that position), ``DIR/truth.csv``
the latent parameters, and ``DIR/mock.json`` what reproduces the sky plus its oracle floor.

``--scale-mode fixed`` (the default) renders every cutout at ``--scale``; ``--scale-mode
petro`` renders each at the paper's scale from its own ``petroR90_r``
(``galmet.scale_mode.petro_scale``): size-normalised frames, as the paper trained on.
``mock.json`` records the mode (``scale_mode``) for ``galmet train``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from galmet.errors import GalmetError
from galmet.files import atomic_write
from galmet.scale_mode import SCALE_MODES, check_scale_mode, petro_scale
from galmet.skyserver import MAX_SIZE, MIN_SIZE
from galmet.training.mocksky import MockSky, MockSkyConfig

# The sky of this process: the main one's, or each worker's own (built by _init_worker).
_SKY: MockSky | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, required=True, help="number of sample galaxies")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (128)")
    parser.add_argument("--scale", type=float, default=0.296, help="arcsec per pixel (0.296)")
    parser.add_argument(
        "--scale-mode",
        choices=SCALE_MODES,
        default="fixed",
        help="fixed: every cutout at --scale; petro: each at 2*petroR90_r/0.396/size "
        "arcsec/px, the paper's recipe (default fixed)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes rendering images (default: all cores)",
    )
    parser.add_argument("--no-images", action="store_true", help="write the tables only")


def _init_worker(n: int, seed: int, config: MockSkyConfig) -> None:
    global _SKY
    _SKY = MockSky(n, seed, config)  # deterministic: the same sky as the parent's


def _render_chunk(args: tuple[list[int], Path, float, int, str]) -> int:
    rows, image_dir, scale, size, mode = args
    assert _SKY is not None
    pop = _SKY.population
    for i in rows:
        if mode == "petro":
            scale = petro_scale(float(pop["petroR90_r"][i]), size)
        data = _SKY.cutout_jpeg(float(pop["ra"][i]), float(pop["dec"][i]), scale, size, size)
        path = image_dir / f"{pop['objID'][i]}.jpg"
        atomic_write(path, data)  # a killed run never leaves a half-written image
    return len(rows)


def simulate(
    n: int,
    out: Path,
    seed: int = 0,
    size: int = 128,
    scale: float = 0.296,
    workers: int = 1,
    images: bool = True,
    config: MockSkyConfig | None = None,
    scale_mode: str = "fixed",
) -> MockSky:
    """Build the mock sky and write catalog, truth, metadata and (optionally) images;
    ``scale_mode`` "petro" renders each galaxy at its own petro scale (``scale`` unused)."""
    global _SKY
    if n < 1:
        raise GalmetError("--n must be at least 1")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise GalmetError(
            f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, as SkyServer allows"
        )
    if scale <= 0:
        raise GalmetError("--scale must be positive (arcsec per pixel)")
    check_scale_mode(scale_mode)
    out.mkdir(parents=True, exist_ok=True)
    sky = MockSky(n, seed, config)
    sky.catalog().write(out / "catalog.csv", format="ascii.csv", overwrite=True)
    sky.truth().write(out / "truth.csv", format="ascii.csv", overwrite=True)
    meta = sky.metadata() | {"image_size": size, "scale_mode": scale_mode}
    if scale_mode == "fixed":
        meta["pixel_scale"] = scale
    (out / "mock.json").write_text(json.dumps(meta, indent=2) + "\n")
    if images:
        image_dir = out / "images"
        image_dir.mkdir(exist_ok=True)
        rows = np.flatnonzero(sky.in_sample).tolist()
        chunks = [
            (rows[i : i + 64], image_dir, scale, size, scale_mode) for i in range(0, len(rows), 64)
        ]
        _SKY = sky
        with tqdm(total=len(rows), desc="rendering", unit="img") as bar:
            if workers > 1:
                # spawn, not fork: the service builds its demo sky from a threaded process,
                # where a forked child can inherit a lock held by another thread.
                init = (sky.n, sky.seed, sky.config)
                with mp.get_context("spawn").Pool(workers, _init_worker, init) as pool:
                    for done in pool.imap_unordered(_render_chunk, chunks):
                        bar.update(done)
            else:
                for chunk in chunks:
                    bar.update(_render_chunk(chunk))
        _SKY = None
    return sky


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    sky = simulate(
        args.n,
        args.out,
        args.seed,
        args.size,
        args.scale,
        max(1, args.workers),
        images=not args.no_images,
        scale_mode=args.scale_mode,
    )
    meta = sky.metadata()
    print(
        f"wrote {sky.n} galaxies to {args.out} in {time.perf_counter() - start:.1f} s; "
        f"oracle floor RMSE {meta['oracle_floor_rmse']:.4f} dex "
        f"(expected {meta['oracle_floor_expected']:.4f})"
    )
    return 0
