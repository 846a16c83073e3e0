"""How often the out-of-distribution flag fires, on the mock sky: galaxies like the training
ones, and inputs unlike them.

    python bench/ood.py --out /tmp/ood-bench            # ~10 min on a 2-core CPU

Simulates a mock sample (``--n`` galaxies, ``--size`` px at ``--scale`` ″/px), trains a small
model on it at that size or resized to ``--train-size`` (the demo's recipe: AdamW, 1 frozen
+ ``--cycles`` SGDR cycles; both are reused from ``--out`` when there; ``--model`` scores
another checkpoint, fitting its statistics first if it has none), then scores, at TTA 1, 4:

- held-out galaxies: the test split, which neither training nor the threshold saw;
- star-only cutouts: a point source of r = 14-18 mag (stellar colours) at the centre;
- pure-noise frames: the mock's sky noise and stretch, no object at all;
- galaxies at 3× the pixel scale: the held-out galaxies rendered at 3 × ``--scale``;
- colour-swapped images: the held-out images with the g and i channels (B and R) swapped.

Prints a table (fraction flagged, median score, per set and TTA level) and one JSON line.
The aim: held-out galaxies flagged ≤ 2 %, every other set ≥ 90 %.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table

from galmet.d4 import check_tta
from galmet.images import decode_image
from galmet.predictor import Predictor
from galmet.training.config import TrainConfig
from galmet.training.dataset import load_data, split_indices
from galmet.training.mock_population import FOOTPRINT, colour_offsets, nmgy
from galmet.training.mock_render import Renderer, encode_jpeg
from galmet.training.mocksky import MockSky
from galmet.training.ood import fit_ood, set_ood_thresholds
from galmet.training.simulate import simulate
from galmet.training.train import train


def random_positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions inside the mock imaging footprint, away from its edges."""
    ra0, ra1, dec0, dec1 = FOOTPRINT
    pad = 0.05
    return rng.uniform(ra0 + pad, ra1 - pad, n), rng.uniform(dec0 + pad, dec1 - pad, n)


def star_table(ra: np.ndarray, dec: np.ndarray, rng: np.random.Generator) -> Table:
    """Stars as the renderer's galaxies: a 0.05″ bulge is a point source once convolved with
    the 1.4″ PSF; r of 14-18 mag (as bright as the sample's galaxies), g - r of 0.3-1.4."""
    r = rng.uniform(14.0, 18.0, len(ra))
    col = colour_offsets(rng.uniform(0.3, 1.4, len(ra)))
    table = Table({"ra": ra, "dec": dec})
    for name, value in (("re_disk", 0.05), ("re_bulge", 0.05), ("pa", 0.0), ("bt", 1.0)):
        table[f"true_{name}"] = np.full(len(ra), value)
    table["true_n_bulge"] = np.full(len(ra), 1.0)
    table["true_q_bulge"] = np.full(len(ra), 1.0)
    for b in "gri":
        table[f"true_flux_bulge_{b}"] = nmgy(r + col[b])
    return table


def as_model_input(rgb: list[np.ndarray], size: int, quality: int) -> torch.Tensor:
    """Rendered RGB arrays as the model sees a cutout: JPEG-coded, decoded and resized like
    the training images, as a uint8 (N, 3, size, size) batch."""
    decoded = [decode_image(encode_jpeg(a, quality), size) for a in rgb]
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()


def build_sets(data_dir: Path, data, test_rows: np.ndarray, size: int, n_ood: int, scale: float):
    """The image sets to score: name -> uint8 (N, 3, size, size)."""
    sky = MockSky.from_dir(data_dir)
    cfg = sky.config
    stored = int(json.loads((data_dir / "mock.json").read_text())["image_size"])
    rng = np.random.default_rng(12)
    held_out = data.images[torch.from_numpy(test_rows)]
    sets = {"held-out galaxies": held_out}

    ra, dec = random_positions(n_ood, rng)
    stars = Renderer(star_table(ra, dec, rng), sky.seed + 1, cfg)
    sets["star-only cutouts"] = as_model_input(
        [stars.render(a, d, scale, stored, stored) for a, d in zip(ra, dec, strict=True)],
        size,
        cfg.jpeg_quality,
    )

    empty = Table({"ra": [0.0], "dec": [-90.0]})  # no galaxy anywhere near the footprint
    quiet = replace(cfg, field_galaxies_per_deg2=0.0, field_stars_per_deg2=0.0)
    noise = Renderer(empty, sky.seed + 2, quiet)
    ra, dec = random_positions(n_ood, rng)
    sets["pure-noise frames"] = as_model_input(
        [noise.render(a, d, scale, stored, stored) for a, d in zip(ra, dec, strict=True)],
        size,
        cfg.jpeg_quality,
    )

    cat = data.catalog[test_rows[:n_ood]]
    sets["galaxies at 3x scale"] = as_model_input(
        [
            sky.render(float(a), float(d), 3 * scale, stored, stored)
            for a, d in zip(cat["ra"], cat["dec"], strict=True)
        ],
        size,
        cfg.jpeg_quality,
    )
    sets["colour-swapped (g<->i)"] = held_out[:n_ood].flip(1)  # R, G, B -> B, G, R
    return sets


def test_rmse(predictor: Predictor, data, rows: np.ndarray) -> float:
    """RMSE of the first output on ``rows`` without TTA (dex)."""
    pred = predictor.predict_images(data.images[torch.from_numpy(rows)], 1)
    return float(np.sqrt(np.mean((pred.mean[:, 0] - data.targets[rows, 0]) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (reused)")
    parser.add_argument("--n", type=int, default=3000, help="mock galaxies to simulate")
    parser.add_argument("--size", type=int, default=64, help="image pixels")
    parser.add_argument(
        "--train-size", type=int, default=None, help="resize to this for training (default: as is)"
    )
    parser.add_argument("--scale", type=float, default=0.396, help="arcsec per pixel")
    parser.add_argument("--cycles", type=int, default=2, help="SGDR cycles (1, 2, 4 … epochs)")
    parser.add_argument("--n-ood", type=int, default=300, help="images per unlike set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tta", type=int, nargs="+", default=[1, 4], help="TTA levels to score at (1 2 4 8)"
    )
    parser.add_argument(
        "--model", type=Path, help="score this checkpoint instead of OUT/model.pt (its data: OUT)"
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="fit the model's OOD statistics again (as this version's training would)",
    )
    args = parser.parse_args()
    levels = [check_tta(t) for t in args.tta]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    data_dir, model = args.out / "data", args.model or args.out / "model.pt"
    if not (data_dir / "mock.json").exists():
        simulate(args.n, data_dir, args.seed, args.size, args.scale, workers=2)
    simulated = time.perf_counter()
    if not model.exists():
        cfg = TrainConfig(
            data=str(data_dir),
            out=str(model),
            size=args.train_size,
            batch_size=64,
            optimizer="adamw",
            lr=1e-3,
            frozen_epochs=1,
            cycles=args.cycles,
            tta=4,
            seed=args.seed,
        )
        train(cfg)
    trained = time.perf_counter()

    predictor = Predictor.from_file(model)
    ck = predictor.checkpoint
    data = load_data(data_dir, list(ck.outputs), ck.input_size, None, progress=False)
    split = split_indices(len(data), ck.split_seed)
    test_rows = split["test"]
    if not ck.ood or args.refit:
        # A checkpoint written before the statistics existed (or at a cycle end of a run
        # still going, or asked to): fit them as training's end does, on the same split.
        fit_ood(predictor, data, [split["train"]])
        predictor = Predictor(ck)
        valid = data.images[torch.from_numpy(split["valid"])]
        preds = {tta: predictor.predict_images(valid, tta) for tta in levels}
        set_ood_thresholds(ck.ood, {t: (p.ood_features, p.ood_pixels) for t, p in preds.items()})
    sets = build_sets(data_dir, data, test_rows, ck.input_size, args.n_ood, args.scale)
    rendered = time.perf_counter()

    results: dict = {}
    print(f"{'set':26s}{'n':>6s}" + "".join(f"{f'flag TTA{t}':>11s}" for t in levels), end="")
    print("".join(f"{f'median TTA{t}':>13s}" for t in levels))
    for name, images in sets.items():
        entry: dict = {"n": len(images)}
        for tta in levels:
            scores = predictor.predict_images(images, tta).ood_score
            assert scores is not None, "the model has no OOD statistics"
            threshold = predictor.ood_threshold(tta)
            entry[f"flagged_tta{tta}"] = float(np.mean(scores > threshold))
            entry[f"median_tta{tta}"] = float(np.median(scores))
        results[name] = entry
        flags = "".join(f"{entry[f'flagged_tta{t}']:11.1%}" for t in levels)
        medians = "".join(f"{entry[f'median_tta{t}']:13.3f}" for t in levels)
        print(f"{name:26s}{len(images):6d}{flags}{medians}")
    thresholds = {t: predictor.ood_threshold(t) for t in levels}
    print(
        "thresholds (99th percentile of validation): "
        + ", ".join(f"TTA{t} {v:.3f}" for t, v in thresholds.items())
        + f"; {len(data)} galaxies, {ck.input_size} px, "
        + f"test RMSE (TTA1) {test_rmse(predictor, data, test_rows):.4f} dex"
    )
    summary = {
        "n_galaxies": len(data),
        "size": ck.input_size,
        "scale": args.scale,
        "epochs": len(ck.history),
        "thresholds": thresholds,
        "sets": results,
        "seconds": {
            "simulate": round(simulated - started, 1),
            "train": round(trained - simulated, 1),
            "render": round(rendered - trained, 1),
            "score": round(time.perf_counter() - rendered, 1),
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
