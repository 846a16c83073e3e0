"""Catalog + image folder → an in-memory dataset with a deterministic split.

Images are decoded once (in parallel) and kept as one uint8 tensor (N, 3, H, W): 130,000
cutouts of 128 px take 6.4 GB, and batches are then plain index operations, augmented on
whatever device they go to (``galmet train`` moves the whole tensor to the GPU when it
fits: ``training.trainer.stage_images``). Targets are chosen by catalog column name and
normalised with the training split's mean and standard deviation. The catalog is read
without astropy (``training.table``): training runs on bare GPU machines.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from galmet.errors import GalmetError
from galmet.images import decode_image
from galmet.training.table import CatalogTable, read_csv_table

#: The paper's 90k / 20k / 20k split of ~130k galaxies, as fractions.
SPLIT_FRACTIONS = {"train": 90 / 130, "valid": 20 / 130, "test": 20 / 130}
MISSING = -9999.0


def split_indices(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of the train / valid / test parts for ``n`` rows (sorted within each)."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(n * SPLIT_FRACTIONS["train"])
    n_valid = round(n * SPLIT_FRACTIONS["valid"])
    parts = {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    return {name: np.sort(idx) for name, idx in parts.items()}


def kfold_indices(rows: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, valid) pairs over ``rows``: each row is validation in exactly one fold."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    shuffled = np.random.default_rng([seed, 7]).permutation(rows)
    folds = np.array_split(shuffled, k)
    return [
        (np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(folds[i])) for i in range(k)
    ]


@dataclass
class TargetScaler:
    """Per-target normalisation: z = (y - mean) / std."""

    names: list[str]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, names: list[str], y: np.ndarray) -> TargetScaler:
        return cls(list(names), y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6))

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> TargetScaler:
        return cls(list(d["names"]), np.asarray(d["mean"]), np.asarray(d["std"]))


@dataclass
class GalaxyData:
    """Everything training and evaluation need, in memory, rows sorted by objID."""

    catalog: CatalogTable
    images: torch.Tensor  # uint8 (N, 3, H, W)
    targets: np.ndarray  # float64 (N, T), in physical units
    target_names: list[str]

    @property
    def objid(self) -> np.ndarray:
        return np.asarray(self.catalog["objID"])

    def __len__(self) -> int:
        return len(self.catalog)


def read_catalog(data_dir: Path, catalog: Path | None = None) -> CatalogTable:
    """``DIR/catalog.csv`` (or ``catalog``) sorted by objID."""
    path = Path(catalog) if catalog is not None else Path(data_dir) / "catalog.csv"
    if not path.exists():
        raise GalmetError(
            f"no catalog.csv in {data_dir} (make one with galmet simulate or catalog)"
        )
    cat = read_csv_table(path)
    if "objID" not in cat.colnames:
        raise GalmetError(f"{path} has no objID column")
    return cat.sorted_by("objID")


def load_images(
    paths: list[Path], size: int | None = None, workers: int | None = None, progress: bool = True
) -> torch.Tensor:
    """Decode image files in parallel into one uint8 tensor (N, 3, H, W).

    Each image is decoded straight into its place in one preallocated array, so the peak is
    the final size plus a few images in flight (not a list, a stacked copy and a permuted
    copy: three times a dataset that may be gigabytes). Images must all have one size, or
    ``size`` resizes them.
    """
    if not paths:
        raise GalmetError("no images to load")
    first = decode_image(paths[0].read_bytes(), size)
    height, width, _ = first.shape
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)

    def read(i: int) -> None:
        image = first if i == 0 else decode_image(paths[i].read_bytes(), size)
        if image.shape != first.shape:
            raise GalmetError(
                f"images differ in size ({paths[0].name} is {first.shape[1]}x{first.shape[0]}, "
                f"{paths[i].name} {image.shape[1]}x{image.shape[0]}): pass a size to resize them"
            )
        out[i] = image.transpose(2, 0, 1)

    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(read, range(len(paths)))
        for _ in tqdm(done, total=len(paths), desc="decoding", unit="img", disable=not progress):
            pass
    return torch.from_numpy(out)


def select_rows(
    data_dir: Path, targets: list[str], limit: int | None = None, catalog: Path | None = None
) -> tuple[CatalogTable, np.ndarray, list[Path]]:
    """Catalog rows with an image and a valid value of every target: (rows, y, image paths).

    Rows without an image file (blank or failed downloads) or with a missing target value
    (-9999, NaN, or a non-positive stellar mass) are left out. Training, evaluation and the
    baseline all select rows here, so that a seed gives all of them the same split.
    """
    data_dir = Path(data_dir)
    cat = read_catalog(data_dir, catalog)
    unknown = [t for t in targets if t not in cat.colnames]
    if unknown:
        raise GalmetError(f"unknown target(s) {', '.join(unknown)}; catalog has {cat.colnames}")
    image_dir = data_dir / "images"
    paths = [image_dir / f"{objid}.jpg" for objid in cat["objID"]]
    keep = np.array([p.exists() for p in paths])
    y = np.stack([np.asarray(cat[t], dtype=float) for t in targets], axis=1)
    keep &= np.all(np.isfinite(y) & (y != MISSING), axis=1)
    for j, t in enumerate(targets):
        if t.startswith("lgm"):
            keep &= y[:, j] > 0
    if limit is not None:
        keep &= np.cumsum(keep) <= limit
    if not keep.any():
        raise GalmetError(f"no galaxy in {data_dir} has both an image and every target")
    rows = np.flatnonzero(keep)
    return cat[rows], y[rows], [paths[i] for i in rows]


def load_data(
    data_dir: Path,
    targets: list[str],
    size: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> GalaxyData:
    """The rows of ``select_rows`` with their images decoded (resized to ``size`` if given)."""
    cat, y, paths = select_rows(data_dir, targets, limit)
    return GalaxyData(cat, load_images(paths, size, progress=progress), y, list(targets))
