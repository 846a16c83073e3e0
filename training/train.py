"""``galmet train``: train the ResNet-34 on a data folder, on the CPU or GPUs, and save it.

Loads the images and targets, splits them into train / validation / test (``--split-seed``),
fits one model (or, with ``--folds K``, a K-fold ensemble over train + validation) with the
paper's schedule (``training.trainer``), calibrates sigma on validation and measures the
test split (``training.calibration``).

Writes MODEL (the best epoch on validation, sigma calibrated on validation, the statistics of the
head's input on the training images with an out-of-distribution threshold set on validation
(``training.ood``), test metrics),
MODEL.last.pt at each cycle end (for ``--resume``), MODEL.metrics.json (per-epoch metrics)
and MODEL.loss.png. Larger batches may scale the learning rate (``--lr-scale linear``:
lr × batch / 64). On CUDA, bf16 autocast and channels_last are on by default (``--no-bf16``,
``--no-channels-last`` turn them off). Under ``torchrun`` it trains with
DistributedDataParallel (see ``training.distributed``); ``--batch-size`` is then the global
batch, split evenly over the processes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galmet.d4 import TTA_LEVELS
from galmet.device import pick_device
from galmet.errors import GalmetError
from galmet.files import atomic_path
from galmet.model import Checkpoint
from galmet.predictor import Predictor, bf16_deviation, native_bf16
from galmet.scale_mode import SCALE_MODES, check_scale_mode
from galmet.training import distributed
from galmet.training.calibration import calibrate_sigma, test_metrics
from galmet.training.config import LR_SCALES, TrainConfig
from galmet.training.dataset import (
    GalaxyData,
    TargetScaler,
    kfold_indices,
    load_data,
    split_indices,
)
from galmet.training.distributed import DistInfo
from galmet.training.ood import fit_ood
from galmet.training.trainer import Trainer, stage_images


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_path(out: Path) -> Path:
    """MODEL.last.pt: the state a run saves at each cycle end, for ``--resume``."""
    return out.with_name(out.name + ".last.pt")


def train(cfg: TrainConfig) -> Checkpoint:
    """Train (one model or a K-fold ensemble), calibrate sigma, measure on test, save.

    With ``cfg.resume`` the run goes on from MODEL.last.pt, written at each cycle end.
    Under torchrun every process calls this: rank 0 alone writes files, calibrates sigma
    and measures the test split; the other ranks return the uncalibrated checkpoint.
    """
    dist = distributed.from_environment()
    device = distributed.init(dist, pick_device(cfg.device))
    try:
        ck = _train(cfg, dist, device)
    except GalmetError:
        # A mistake in the options or data, which every rank finds alike: leave quietly.
        distributed.leave(dist)
        raise
    # Other exceptions leave the group as it is: the process ends and torchrun stops the
    # rest (a barrier would wait for ranks that are inside some other collective).
    distributed.shutdown(dist)
    return ck


def _train(cfg: TrainConfig, dist: DistInfo, device: torch.device) -> Checkpoint:
    world = dist.world_size
    if cfg.batch_size % world or cfg.batch_size < 2 * world:
        raise GalmetError(
            f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes, "
            "with at least 2 images per process (BatchNorm)"
        )
    seed_everything(cfg.seed)
    if device.type == "cuda":
        # Every batch has the same shape: let cuDNN pick its fastest convolutions once.
        torch.backends.cudnn.benchmark = True
    cfg.world_size = world
    cfg.lr_effective = cfg.head_lr()
    out = Path(cfg.out)
    if dist.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
    saved = None
    if cfg.resume:
        if not resume_path(out).exists():
            raise GalmetError(f"nothing to resume: {resume_path(out)} does not exist")
        saved = torch.load(resume_path(out), map_location="cpu", weights_only=False)
        keep = ("data", "targets", "size", "bands", "folds", "split_seed", "limit")
        changed = [k for k in keep if saved["config"][k] != getattr(cfg, k)]
        if changed:
            raise GalmetError(f"--resume with different {', '.join(changed)} than the saved run")
    data = load_data(Path(cfg.data), cfg.targets, cfg.size, cfg.limit, progress=dist.is_main)
    # What the stored cutouts are, so that predictions fetch the same field of view.
    cfg.image_size = stored_image_size(Path(cfg.data), data)
    cfg.scale_mode = check_scale_mode(cfg.scale_mode or stored_scale_mode(Path(cfg.data)))
    if cfg.scale_mode == "petro":
        cfg.pixel_scale = None  # each galaxy's own: galmet.scale_mode.petro_scale
    elif cfg.pixel_scale is None:
        cfg.pixel_scale = stored_pixel_scale(Path(cfg.data))
    split = split_indices(len(data), cfg.split_seed)
    if len(split["train"]) < 2 or len(split["valid"]) < 1:
        raise GalmetError(f"{len(data)} galaxies are too few to split into train/valid/test")
    if cfg.folds > 1:
        pool = np.concatenate([split["train"], split["valid"]])
        folds = kfold_indices(pool, cfg.folds, cfg.split_seed)
    else:
        folds = [(split["train"], split["valid"])]
    scaler = TargetScaler.fit(cfg.targets, data.targets[split["train"]])
    size = int(data.images.shape[-1])
    data.images = stage_images(data.images, device, cfg.data_on_device)
    if dist.is_main:
        print(
            f"{len(data)} galaxies ({len(split['train'])} train, {len(split['valid'])} valid, "
            f"{len(split['test'])} test), {size} px, targets {', '.join(cfg.targets)}, "
            f"on {device}"
            + (f" x {world} processes" if world > 1 else "")
            + f"; {cfg.frozen_epochs} frozen + {cfg.epochs} unfrozen epochs"
            + (f" x {cfg.folds} folds" if cfg.folds > 1 else "")
        )

    states: list[dict] = saved["members"] if saved else []
    history: list[dict] = saved["done_history"] if saved else []
    started = time.perf_counter()

    def make_checkpoint(members: list[dict], hist: list[dict]) -> Checkpoint:
        return Checkpoint(
            outputs=list(cfg.targets),
            target_mean=scaler.mean.tolist(),
            target_std=scaler.std.tolist(),
            input_size=size,
            bands=cfg.bands,
            model_states=members,
            config=asdict(cfg),
            split_seed=cfg.split_seed,
            data=str(cfg.data),
            history=hist,
        )

    def after_epoch(t: Trainer, epoch: int, opt, sched, cycle_end: bool) -> None:
        if not dist.is_main:
            return
        # states and history are the lists of the folds done so far.
        write_history(out, history + t.history)
        if not cycle_end:
            return
        # A usable model at every cycle end (best epoch so far, sigma not yet calibrated),
        # replaced by the calibrated one when training ends.
        assert t.best is not None
        make_checkpoint(states + [t.best["state"]], history + t.history).save(out)
        plot_history(out, history + t.history)
        state = t.state(epoch, opt, sched)
        state |= {"config": asdict(cfg), "members": states, "done_history": history}
        with atomic_path(resume_path(out)) as tmp:
            torch.save(state, tmp)

    for fold in range(len(states), len(folds)):
        train_rows, valid_rows = folds[fold]
        trainer = Trainer(cfg, data, scaler, train_rows, valid_rows, device, fold, dist)

        resume = saved if saved and saved["fold"] == fold else None
        best = trainer.fit(resume, on_epoch_end=after_epoch)
        states.append(best["state"])
        history += trainer.history
        if dist.is_main:
            write_history(out, history)
            print(
                f"fold {fold + 1}/{len(folds)}: best epoch {best['epoch']}, valid RMSE "
                + ", ".join(f"{k} {v:.4f}" for k, v in trainer.history[-1]["valid_rmse"].items())
            )

    ck = make_checkpoint(states, history)
    if not dist.is_main:
        return ck
    valid_rows = np.concatenate([v for _, v in folds])
    # First whether bf16 leaves this model's predictions alone (galmet.predictor decides
    # by it on a CPU), so that what follows runs at the precision the service will use.
    ck.bf16_check = bf16_check(ck, data, valid_rows, device)
    # The statistics of the head's input on the training images, then a predictor that
    # scores with them, so that calibration sets the OOD threshold beside sigma's scale.
    fit_ood(Predictor(ck, device), data, [t for t, _ in folds])
    predictor = Predictor(ck, device)
    ck.sigma_scale = calibrate_sigma(predictor, data, valid_rows)
    ck.metrics = test_metrics(predictor, data, split["test"], cfg.tta)
    ck.metrics["train_seconds"] = time.perf_counter() - started
    ck.save(out)
    plot_history(out, history)
    return ck


#: Validation images the bf16 check looks at, at most (it is two passes at TTA 1).
BF16_CHECK_ROWS = 2000


def bf16_check(ck: Checkpoint, data: GalaxyData, rows: np.ndarray, device) -> dict:
    """``Checkpoint.bf16_check`` on (up to ``BF16_CHECK_ROWS`` of) the validation ``rows``;
    empty where the device has no native bf16 (emulated, it is slow and would not be used)."""
    if not native_bf16(device) or len(rows) == 0:
        return {}
    rows = rows[:BF16_CHECK_ROWS]
    images = data.images[torch.from_numpy(rows)]
    return {"max_dex": bf16_deviation(ck, images, device), "n": int(len(rows)), "split": "valid"}


def stored_image_size(data_dir: Path, data: GalaxyData) -> int:
    """Pixel size of the image files (before ``--size`` resized them)."""
    from PIL import Image

    with Image.open(data_dir / "images" / f"{data.objid[0]}.jpg") as im:
        return int(im.size[0])


def stored_pixel_scale(data_dir: Path, default: float = 0.296) -> float:
    """Arcsec per pixel of the stored cutouts: from a mock sky's mock.json, else the
    scale galmet download uses by default."""
    meta = data_dir / "mock.json"
    if meta.exists():
        return float(json.loads(meta.read_text()).get("pixel_scale", default))
    return default


def stored_scale_mode(data_dir: Path) -> str:
    """The cutout recipe of the stored images: a mock sky's mock.json says; else fixed
    (``galmet download`` data says nothing: pass ``--scale-mode`` as downloaded)."""
    meta = data_dir / "mock.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("scale_mode") or "fixed"
    return "fixed"


def write_history(out: Path, history: list[dict]) -> None:
    """MODEL.metrics.json: one record per epoch."""
    out.with_name(out.name + ".metrics.json").write_text(json.dumps(history, indent=1) + "\n")


def plot_history(out: Path, history: list[dict]) -> None:
    """MODEL.loss.png: the loss curves of ``history``."""
    from galmet.training.figures import plot_loss_curve

    plot_loss_curve(history, out.with_name(out.name + ".loss.png"))


class DefaultsShown(argparse.HelpFormatter):
    """Help with each option's default, where it has one its help does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``galmet train``; defaults come from ``TrainConfig`` and every option's
    help shows its default."""
    parser.formatter_class = DefaultsShown
    d = TrainConfig(data="", out="")
    a = parser.add_argument
    a("--data", required=True, help="folder with catalog.csv and images/")
    a("--out", required=True, help="checkpoint file to write, e.g. models/oh.pt")
    a(
        "--target",
        action="append",
        dest="targets",
        help="catalog column to predict, repeatable (default: oh_p50)",
    )
    a("--size", type=int, help="resize images to this many pixels (default: as stored)")
    a(
        "--pixel-scale",
        type=float,
        help="arcsec/px of the stored images (default: mock.json's, else 0.296)",
    )
    a(
        "--scale-mode",
        choices=list(SCALE_MODES),
        help="the cutout recipe of the stored images, recorded in the checkpoint "
        "(default: mock.json's, else fixed)",
    )
    a("--bands", choices=["gri", "r"], default=d.bands, help="gri colour, or the r band only")
    a("--init", default=d.init, help="starting weights: scratch, imagenet or a PATH")
    a(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="images per step (over all processes under torchrun)",
    )
    a("--lr", type=float, default=d.lr, help="head learning rate; body groups get 1/9 and 1/3")
    a(
        "--lr-scale",
        choices=list(LR_SCALES),
        default=d.lr_scale,
        help="scale --lr with the batch: linear = lr x batch / reference batch, or sqrt",
    )
    a(
        "--lr-reference-batch",
        type=int,
        default=d.lr_reference_batch,
        help="the batch size --lr is meant for (with --lr-scale)",
    )
    a("--frozen-epochs", type=int, default=d.frozen_epochs, help="head-only epochs first")
    a("--cycles", type=int, default=d.cycles, help="SGDR cycles after unfreezing")
    a("--cycle-len", type=int, default=d.cycle_len, help="epochs of the first SGDR cycle")
    a(
        "--cycle-mult",
        type=int,
        default=d.cycle_mult,
        help="each SGDR cycle is this many times longer",
    )
    a(
        "--schedule",
        choices=["sgdr", "onecycle"],
        default=d.schedule,
        help="SGDR (the paper's), or one-cycle (super-convergence)",
    )
    a(
        "--optimizer",
        choices=["sgd", "adamw"],
        default=d.optimizer,
        help="SGD with momentum (the paper's), or AdamW",
    )
    a("--momentum", type=float, default=d.momentum, help="SGD momentum")
    a("--weight-decay", type=float, default=d.weight_decay, help="weight decay of the optimiser")
    a("--folds", type=int, default=d.folds, help="K > 1 trains a K-fold ensemble")
    a("--seed", type=int, default=d.seed, help="seed of weights, batches and augmentation")
    a("--split-seed", type=int, default=d.split_seed, help="seed of the train/valid/test split")
    a("--device", default=d.device, help="auto, cpu or cuda")
    a("--tta", type=int, choices=TTA_LEVELS, default=d.tta, help="TTA copies of the test metrics")
    a("--limit", type=int, help="use only the first N galaxies (default: all)")
    a("--max-steps", type=int, help="at most N batches per epoch, for quick trials (default: all)")
    a("--resume", action="store_true", help="go on from OUT.last.pt (saved at each cycle end)")
    speed = argparse.BooleanOptionalAction
    a("--bf16", action=speed, help="bfloat16 autocast (default: on CUDA only)")
    a("--channels-last", action=speed, help="NHWC memory format (default: on CUDA only)")
    a("--compile", action="store_true", help="torch.compile the model (slow to start)")
    a(
        "--compile-backend",
        choices=["inductor", "aot_eager", "eager", "cudagraphs"],
        default=d.compile_backend,
        help="torch.compile backend (the eager ones only trace, for debugging)",
    )
    a(
        "--data-on-device",
        choices=["auto", "yes", "no"],
        default=d.data_on_device,
        help="keep the images on the GPU: auto = when they fit in 40%% of its free memory",
    )


def main(args: argparse.Namespace) -> int:
    """``galmet train``: check the options, train, print the test metrics."""
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.setdefault("targets", ["oh_p50"])
    cfg = TrainConfig(**values)
    if cfg.batch_size < 2:
        raise GalmetError("--batch-size must be at least 2 (BatchNorm needs two samples)")
    if cfg.lr <= 0 or cfg.cycles < 1 or cfg.cycle_len < 1 or cfg.cycle_mult < 1:
        raise GalmetError("--lr must be positive; --cycles, --cycle-len, --cycle-mult >= 1")
    if not math.isfinite(cfg.lr):
        raise GalmetError("--lr must be finite")
    if cfg.lr_reference_batch < 1:
        raise GalmetError("--lr-reference-batch must be positive")
    ck = train(cfg)
    if not distributed.from_environment().is_main:
        return 0
    for variant, per_target in ck.metrics.get("results", {}).items():
        for name, m in per_target.items():
            print(
                f"test {variant} {name}: RMSE {m['rmse']:.4f}, NMAD {m['nmad']:.4f}, "
                f"within 1 sigma {m.get('calibration_1sigma', float('nan')):.3f}"
            )
    print(f"wrote {cfg.out} (+ .metrics.json, .loss.png)")
    return 0
