"""``galmet resolution``: the paper's resolution study, one model per image size.

For each ``--sizes`` value S, trains a metallicity model on the images of ``--data``
downsampled to S x S pixels (``galmet train --size S``: Pillow's bilinear resize, which
widens its filter when it shrinks an image, so the small images are antialiased, and the
one the service uses to bring a cutout to a model's input), on the same train / validation /
test split for every size (``--split-seed``), and scores it on the test split with
``galmet evaluate``. The paper (Wu & Boada 2019) did this on real SDSS cutouts; recomputed
from its public test-set predictions, RMSE / NMAD are 0.0849 / 0.0651 dex at 128 px,
0.0879 / 0.0678 at 64, 0.0930 / 0.0709 at 32 and 0.1043 / 0.0799 at 16.

Writes to ``--out``:

- ``{S}px/model.pt`` (+ the training run's files) and ``{S}px/eval/`` (``galmet evaluate``'s
  metrics.json, figures and predictions) per size;
- ``resolution.csv``: one row per size: pixels, test galaxies, RMSE and NMAD with TTA 1 and
  with ``--tta`` copies, the outlier fraction, the paper's real-SDSS RMSE and NMAD at that
  size (blank where the paper has none), and the oracle floor on a mock sky;
- ``resolution.png``: test RMSE against pixels, the paper's real-SDSS values beside ours;
- ``resolution.json``: the study's settings, so that a rerun into the same folder goes on
  with the same ones.

Resumable per size: a size whose ``eval/metrics.json`` exists is skipped on a rerun; a
size whose training was interrupted goes on from its ``model.pt.last.pt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from tqdm import tqdm

from galmet.errors import GalmetError
from galmet.files import atomic_path, atomic_write
from galmet.training.config import TrainConfig

TARGET = "oh_p50"
MIN_SIZE = 8  # ResNet-34 reduces 8 px to 1 before its pooling; smaller says nothing more
#: The paper's real-SDSS test RMSE and NMAD (dex) by image size, from its public predictions.
PAPER = {128: (0.0849, 0.0651), 64: (0.0879, 0.0678), 32: (0.0930, 0.0709), 16: (0.1043, 0.0799)}
#: Training settings that define the study; a rerun into the same --out must match them.
SETTINGS = (
    "init",
    "batch_size",
    "lr",
    "frozen_epochs",
    "cycles",
    "cycle_len",
    "cycle_mult",
    "seed",
    "split_seed",
    "limit",
    "max_steps",
    "tta",
)
COLUMNS = [
    "size",
    "n_test",
    "rmse",
    "nmad",
    "rmse_tta1",
    "nmad_tta1",
    "outlier_fraction",
    "paper_rmse",
    "paper_nmad",
    "oracle_floor_rmse",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", out="")
    a = parser.add_argument
    a("--data", type=Path, required=True, help="folder with catalog.csv and images/")
    a(
        "--sizes",
        type=int,
        nargs="+",
        required=True,
        help="image sizes in pixels, each at most the stored images' size, e.g. 64 32 16 8",
    )
    a("--out", type=Path, required=True, help="output folder for the models, table and figure")
    a("--tta", type=int, choices=(1, 2, 4, 8), default=8, help="TTA copies of the scores (8)")
    a("--init", default=d.init, help=f"starting weights: scratch, imagenet or a PATH ({d.init})")
    a("--batch-size", type=int, default=d.batch_size, help=f"images per step ({d.batch_size})")
    a("--lr", type=float, default=d.lr, help=f"head learning rate ({d.lr})")
    a("--frozen-epochs", type=int, default=d.frozen_epochs, help="head-only epochs first")
    a("--cycles", type=int, default=d.cycles, help=f"SGDR cycles after unfreezing ({d.cycles})")
    a("--cycle-len", type=int, default=d.cycle_len, help="epochs of the first SGDR cycle")
    a("--cycle-mult", type=int, default=d.cycle_mult, help="each cycle is this many times longer")
    a("--seed", type=int, default=d.seed, help="seed of weights, batches and augmentation")
    a("--split-seed", type=int, default=d.split_seed, help="seed of the train/valid/test split")
    a("--limit", type=int, help="use only the first N galaxies (default: all)")
    a("--max-steps", type=int, help="at most N batches per epoch, for quick trials")
    a("--device", default=d.device, help="auto, cpu or cuda")


def _settings(args: argparse.Namespace) -> dict:
    return {"data": str(Path(args.data).resolve())} | {k: getattr(args, k) for k in SETTINGS}


def _check_settings(out: Path, settings: dict) -> None:
    """Record the study's settings in ``out``, or check a rerun's against those recorded."""
    path = out / "resolution.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise GalmetError(
                f"{out} holds a study with different {', '.join(changed)}: "
                "rerun with the same settings, or use another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(settings, indent=2) + "\n")


def _stored_size(data: Path) -> int:
    """Pixel size of the stored images (those of the rows training would use)."""
    from PIL import Image

    from galmet.training.dataset import select_rows

    _, _, paths = select_rows(data, [TARGET])
    with Image.open(paths[0]) as im:
        return int(im.size[0])


def _trained(model: Path) -> bool:
    """Whether ``model`` is a finished run's (test metrics are written at the very end)."""
    from galmet.model import Checkpoint

    return model.exists() and "results" in Checkpoint.load(model).metrics


def run_size(args: argparse.Namespace, size: int) -> dict:
    """Train (or resume) and evaluate the model of one size; its row of the table."""
    from galmet.training.evaluate import evaluate
    from galmet.training.train import resume_path, train

    folder = args.out / f"{size}px"
    model, scores = folder / "model.pt", folder / "eval" / "metrics.json"
    if not scores.exists():
        if not _trained(model):
            cfg = TrainConfig(
                data=str(Path(args.data).resolve()),
                out=str(model),
                targets=[TARGET],
                size=size,
                resume=resume_path(model).exists(),
                device=args.device,
                **{k: getattr(args, k) for k in SETTINGS},
            )
            train(cfg)
        evaluate(model, args.data, "test", args.tta, folder / "eval", args.device)
    return table_row(size, json.loads(scores.read_text()), args.tta)


def table_row(size: int, record: dict, tta: int) -> dict:
    """One row of resolution.csv from ``galmet evaluate``'s metrics record."""
    best, plain = record["results"][f"tta{tta}"][TARGET], record["results"]["tta1"][TARGET]
    paper = PAPER.get(size, (None, None))
    return {
        "size": size,
        "n_test": record["n"],
        "rmse": best["rmse"],
        "nmad": best["nmad"],
        "rmse_tta1": plain["rmse"],
        "nmad_tta1": plain["nmad"],
        "outlier_fraction": best["outlier_fraction"],
        "paper_rmse": paper[0],
        "paper_nmad": paper[1],
        "oracle_floor_rmse": record.get("oracle_floor", {}).get("rmse"),
    }


def write_table(path: Path, rows: list[dict]) -> Path:
    """resolution.csv: ``COLUMNS``, one row per size, blanks where a value does not apply."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row[k]) for k in COLUMNS})
    return path


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.5f}" if isinstance(value, float) else str(value)


def plot_resolution(path: Path, rows: list[dict], tta: int) -> Path:
    """RMSE against pixels: ours (TTA and without), the paper's real SDSS, the oracle floor."""
    from matplotlib.figure import Figure

    from galmet.training.figures import DPI

    rows = sorted(rows, key=lambda r: r["size"])
    sizes = [r["size"] for r in rows]
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    ours = [r["rmse"] for r in rows]
    ax.plot(sizes, ours, "o-", color="tab:blue", label=f"this run, TTA {tta}")
    if tta != 1:
        plain = [r["rmse_tta1"] for r in rows]
        ax.plot(sizes, plain, "o--", color="tab:blue", alpha=0.5, label="this run, no TTA")
    paper_sizes = sorted(PAPER)
    paper_rmse = [PAPER[s][0] for s in paper_sizes]
    ax.plot(paper_sizes, paper_rmse, "s-", color="0.4", label="Wu & Boada (2019), real SDSS")
    floors = [r["oracle_floor_rmse"] for r in rows if r["oracle_floor_rmse"] is not None]
    if floors:
        ax.axhline(floors[0], color="firebrick", ls=":", label="oracle floor (mock sky)")
    ticks = sorted(set(sizes) | set(PAPER))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("image size (pixels)")
    ax.set_ylabel("test RMSE of 12+log(O/H) (dex)")
    ax.set_title("Metallicity error against image resolution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def print_table(rows: list[dict], tta: int) -> None:
    header = f"{'pixels':>6s}{'N test':>8s}{'RMSE':>9s}{'NMAD':>9s}{'RMSE TTA1':>11s}"
    print(header + f"{'real SDSS RMSE':>16s}{'NMAD':>8s}  (TTA {tta}; dex)")
    for r in sorted(rows, key=lambda r: -r["size"]):
        paper = (
            f"{r['paper_rmse']:16.4f}{r['paper_nmad']:8.4f}" if r["paper_rmse"] else f"{'-':>16s}"
        )
        print(
            f"{r['size']:6d}{r['n_test']:8d}{r['rmse']:9.4f}{r['nmad']:9.4f}"
            f"{r['rmse_tta1']:11.4f}{paper}"
        )


def main(args: argparse.Namespace) -> int:
    sizes = list(dict.fromkeys(args.sizes))  # drop repeats, keep order
    if min(sizes) < MIN_SIZE:
        raise GalmetError(f"--sizes must be at least {MIN_SIZE} pixels")
    if not args.data.is_dir():
        raise GalmetError(f"data folder {args.data} does not exist")
    stored = _stored_size(args.data)
    if max(sizes) > stored:
        raise GalmetError(
            f"--sizes must be at most the stored images' {stored} px (the study downsamples)"
        )
    if args.batch_size < 2 or args.cycles < 1 or args.cycle_len < 1 or args.cycle_mult < 1:
        raise GalmetError(
            "--batch-size must be at least 2; --cycles, --cycle-len, --cycle-mult at least 1"
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise GalmetError("--lr must be a positive number")
    _check_settings(args.out, _settings(args))

    rows = []
    for size in (bar := tqdm(sizes, desc="resolution study", unit="size")):
        done = (args.out / f"{size}px" / "eval" / "metrics.json").exists()
        bar.set_postfix_str(f"{size} px" + (" (done before)" if done else ""))
        rows.append(run_size(args, size))
    table = write_table(args.out / "resolution.csv", rows)
    figure = plot_resolution(args.out / "resolution.png", rows, args.tta)
    print_table(rows, args.tta)
    print(f"wrote {table} and {figure}")
    return 0
