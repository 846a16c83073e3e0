"""``galmet train``: the paper's schedule for the ResNet-34, on the CPU or a GPU.

Phase 1 trains the head with the body frozen; phase 2 unfreezes everything and trains
three layer groups at learning rates in ratio 1/9 : 1/3 : 1. The schedule is SGDR: cosine
annealing per mini-batch, restarted at the start of each cycle, cycles of 1, 2, 4 …
epochs (``--cycles``, ``--cycle-len``, ``--cycle-mult``); ``--schedule onecycle`` is the
super-convergence variant. The prediction is trained with the RMSE loss; the sigma output
with a Gaussian likelihood on the detached prediction (see ``training.model``). Training
images get a random rotation/flip of the square; nothing else (size carries information).

Writes MODEL (the best epoch on validation, sigma calibrated on validation, test metrics),
MODEL.last.pt at each cycle end (for ``--resume``), MODEL.metrics.json (per-epoch metrics)
and MODEL.loss.png. ``--folds K`` trains a K-fold ensemble over train + validation.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from galmet.errors import GalmetError
from training.augment import TTA_TRANSFORMS, random_d4
from training.dataset import GalaxyData, TargetScaler, kfold_indices, load_data, split_indices
from training.model import Checkpoint, GalmetNet, Predictor, build_model
from training.preprocess import normalise

#: Learning-rate ratios of the three layer groups (early body, late body, head).
GROUP_LR_RATIOS = (1 / 9, 1 / 3, 1.0)


@dataclass
class TrainConfig:
    """Every knob of a training run; stored in the checkpoint."""

    data: str
    out: str
    targets: list[str] = field(default_factory=lambda: ["oh_p50"])
    size: int | None = None  # resize images to this many pixels; None keeps their size
    pixel_scale: float | None = None  # arcsec/px of the stored images (mock.json, else 0.296)
    image_size: int | None = None  # pixels of the stored images, before any resizing
    bands: str = "gri"
    init: str = "scratch"
    batch_size: int = 256
    lr: float = 0.01  # of the head; the body groups get 1/9 and 1/3 (0.1 diverged on the mock)
    frozen_epochs: int = 1
    cycles: int = 3
    cycle_len: int = 1
    cycle_mult: int = 2
    schedule: str = "sgdr"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sigma_weight: float = 0.1  # weight of the sigma likelihood next to the RMSE loss
    folds: int = 1
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    tta: int = 8  # copies for the validation calibration and the test metrics
    limit: int | None = None
    max_steps: int | None = None  # stop each epoch after this many batches (quick tests)
    resume: bool = False

    @property
    def epochs(self) -> int:
        return sum(self.cycle_len * self.cycle_mult**c for c in range(self.cycles))


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GalmetError("--device cuda, but no CUDA GPU is available here")
    if name not in ("cpu", "cuda"):
        raise GalmetError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(
    groups: list[list[nn.Parameter]], lrs: list[float], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW, one parameter group per layer group."""
    param_groups = [{"params": p, "lr": lr} for p, lr in zip(groups, lrs, strict=True)]
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay, fused=fused)
    raise GalmetError(f"--optimizer must be sgd or adamw, not {cfg.optimizer!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    cycle_len: int,
    cycle_mult: int,
    epochs: int,
    schedule: str = "sgdr",
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per mini-batch.

    SGDR: cosine from each group's rate to 0 over a cycle, restarting at the next; cycle k
    lasts ``cycle_len * cycle_mult**k`` epochs. One-cycle: warm up then anneal over all
    ``epochs``, peaking at each group's rate.
    """
    if schedule == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cycle_len * steps_per_epoch, T_mult=cycle_mult, eta_min=0.0
        )
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=epochs * steps_per_epoch,
        )
    raise GalmetError(f"--schedule must be sgdr or onecycle, not {schedule!r}")


def loss_fn(
    mean: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor, sigma_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, RMSE). RMSE trains the prediction; a Gaussian likelihood of the
    residual, with the prediction detached, trains log sigma."""
    rmse = torch.sqrt(torch.mean((mean - y) ** 2))
    z = (y - mean.detach()) * torch.exp(-log_sigma)
    nll = torch.mean(log_sigma + 0.5 * z**2)
    return rmse + sigma_weight * nll, rmse


class Trainer:
    """Fits one network on given rows; ``fit`` runs both phases of the schedule."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: GalaxyData,
        scaler: TargetScaler,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        device: torch.device,
        fold: int = 0,
    ) -> None:
        self.cfg, self.data, self.device, self.fold = cfg, data, device, fold
        self.scaler = scaler
        self.train_rows, self.valid_rows = train_rows, valid_rows
        self.y = torch.from_numpy(scaler.transform(data.targets)).float()
        self.model: GalmetNet = build_model(len(data.target_names), cfg.init).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + fold)
        self.history: list[dict] = []
        self.best: dict | None = None  # {"valid_loss", "epoch", "state"}
        # Whole batches only: a last batch of one image would break BatchNorm.
        self.steps_per_epoch = max(1, len(train_rows) // cfg.batch_size)
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)

    # One training batch: uint8 images to the device, random D4, normalise, step.
    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.images[idx].to(self.device, non_blocking=True)
        x = normalise(random_d4(x, self.generator), self.cfg.bands)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.y[idx].to(self.device, non_blocking=True)

    def run_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, scheduler, phase: str
    ) -> dict:
        cfg = self.cfg
        # The frozen body stays in train mode, as fastai's does: its weights do not move, but
        # its BatchNorm statistics follow the data (from scratch they are only placeholders).
        self.model.train()
        rows = torch.from_numpy(self.train_rows)
        perm = rows[torch.randperm(len(rows), generator=self.generator)]
        bs = min(cfg.batch_size, len(rows))
        start = time.perf_counter()
        total = torch.zeros((), device=self.device)
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"{phase} epoch {epoch + 1}" + (f" fold {self.fold + 1}" if cfg.folds > 1 else ""),
            unit="batch",
            leave=False,
        )
        for step in bar:
            idx = perm[(step * bs) % len(perm) :][:bs]
            x, y = self._batch(idx)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self._bf16()):
                mean, log_sigma = self.model(x)
            loss, rmse = loss_fn(mean, log_sigma, y, cfg.sigma_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_lr = optimizer.param_groups[-1]["lr"]  # before a restart resets it
            scheduler.step()
            total += rmse.detach()
            # Reading the loss back synchronises the GPU: only now and then.
            if step % 20 == 0 or step == self.steps_per_epoch - 1:
                bar.set_postfix(rmse=f"{total.item() / (step + 1):.4f}")
        seconds = time.perf_counter() - start
        valid = self.validate()
        record = {
            "epoch": epoch + 1,
            "phase": phase,
            "fold": self.fold,
            "train_loss": total.item() / self.steps_per_epoch,
            "valid_loss": valid["loss"],
            "valid_rmse": valid["rmse"],
            "lr": last_lr,  # of the head, at the epoch's last batch
            "seconds": seconds,
            "images_per_second": self.steps_per_epoch * bs / seconds,
        }
        self.history.append(record)
        if self.best is None or valid["loss"] < self.best["valid_loss"]:
            self.best = {
                "valid_loss": valid["loss"],
                "epoch": epoch + 1,
                "state": copy.deepcopy({k: v.cpu() for k, v in self.model.state_dict().items()}),
            }
        return record

    @torch.inference_mode()
    def validate(self) -> dict:
        """RMSE on the validation rows (no TTA): normalised loss and per-target dex."""
        self.model.eval()
        sq = torch.zeros(self.y.shape[1])
        for start in range(0, len(self.valid_rows), 512):
            idx = torch.from_numpy(self.valid_rows[start : start + 512])
            x = normalise(self.data.images[idx].to(self.device), self.cfg.bands)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self._bf16()):
                mean, _ = self.model(x)
            sq += ((mean.float().cpu() - self.y[idx]) ** 2).sum(dim=0)
        mse = sq / max(1, len(self.valid_rows))
        std = torch.from_numpy(self.scaler.std).float()
        return {
            "loss": float(torch.sqrt(mse.mean())),
            "rmse": dict(zip(self.data.target_names, (mse.sqrt() * std).tolist(), strict=True)),
        }

    def _bf16(self) -> bool:
        return self.device.type == "cuda"

    def state(self, epoch: int, optimizer=None, scheduler=None) -> dict:
        """Everything needed to go on from the end of ``epoch`` epochs (for --resume)."""
        return {
            "fold": self.fold,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "generator": self.generator.get_state(),
            "history": self.history,
            "best": self.best,
        }

    def fit(self, resume: dict | None = None, on_epoch_end=None) -> dict:
        """Both phases; returns the best state on validation.

        ``on_epoch_end(trainer, epoch, optimizer, scheduler, cycle_end)`` is called after
        every epoch; ``cycle_end`` is true at the end of the frozen phase and of each SGDR
        cycle, where a run can be resumed from ``state``.
        """
        cfg = self.cfg
        groups = self.model.layer_groups()
        done = 0
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.generator.set_state(resume["generator"])
            self.history, self.best, done = resume["history"], resume["best"], resume["epoch"]
        epoch = done
        if done < cfg.frozen_epochs:
            for p in groups[0] + groups[1]:
                p.requires_grad_(False)
            opt = make_optimizer([groups[2]], [cfg.lr], cfg, self.device)
            n = cfg.frozen_epochs
            sched = make_scheduler(opt, self.steps_per_epoch, n, 1, n)
            for e in range(n):
                self.run_epoch(epoch, opt, sched, "frozen")
                epoch += 1
                if on_epoch_end is not None and e < n - 1:
                    on_epoch_end(self, epoch, None, None, False)
            for p in groups[0] + groups[1]:
                p.requires_grad_(True)
            if on_epoch_end is not None:
                on_epoch_end(self, epoch, None, None, True)
        lrs = [cfg.lr * r for r in GROUP_LR_RATIOS]
        opt = make_optimizer(groups, lrs, cfg, self.device)
        sched = make_scheduler(
            opt, self.steps_per_epoch, cfg.cycle_len, cfg.cycle_mult, cfg.epochs, cfg.schedule
        )
        if resume is not None and resume["optimizer"] is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
        cycle_ends = set(
            np.cumsum([cfg.cycle_len * cfg.cycle_mult**c for c in range(cfg.cycles)]).tolist()
        )
        for e in range(max(0, epoch - cfg.frozen_epochs), cfg.epochs):
            self.run_epoch(epoch, opt, sched, "unfrozen")
            epoch += 1
            if on_epoch_end is not None:
                on_epoch_end(self, epoch, opt, sched, e + 1 in cycle_ends)
        assert self.best is not None
        return self.best


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".last.pt")


def train(cfg: TrainConfig) -> Checkpoint:
    """Train (one model or a K-fold ensemble), calibrate sigma, measure on test, save.

    With ``cfg.resume`` the run goes on from MODEL.last.pt, written at each cycle end.
    """
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
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
    data = load_data(Path(cfg.data), cfg.targets, cfg.size, cfg.limit)
    # What the stored cutouts are, so that predictions fetch the same field of view.
    cfg.image_size = stored_image_size(Path(cfg.data), data)
    if cfg.pixel_scale is None:
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
    print(
        f"{len(data)} galaxies ({len(split['train'])} train, {len(split['valid'])} valid, "
        f"{len(split['test'])} test), {size} px, targets {', '.join(cfg.targets)}, "
        f"on {device}; {cfg.frozen_epochs} frozen + {cfg.epochs} unfrozen epochs"
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
        tmp = resume_path(out).with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(resume_path(out))

    for fold in range(len(states), len(folds)):
        train_rows, valid_rows = folds[fold]
        trainer = Trainer(cfg, data, scaler, train_rows, valid_rows, device, fold)

        resume = saved if saved and saved["fold"] == fold else None
        best = trainer.fit(resume, on_epoch_end=after_epoch)
        states.append(best["state"])
        history += trainer.history
        write_history(out, history)
        print(
            f"fold {fold + 1}/{len(folds)}: best epoch {best['epoch']}, valid RMSE "
            + ", ".join(f"{k} {v:.4f}" for k, v in trainer.history[-1]["valid_rmse"].items())
        )

    ck = make_checkpoint(states, history)
    predictor = Predictor(ck, device)
    valid_rows = np.concatenate([v for _, v in folds])
    ck.sigma_scale = calibrate_sigma(predictor, data, valid_rows)
    ck.metrics = test_metrics(predictor, data, split["test"], cfg.tta)
    ck.metrics["train_seconds"] = time.perf_counter() - started
    ck.save(out)
    plot_history(out, history)
    return ck


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


def calibrate_sigma(predictor: Predictor, data: GalaxyData, rows: np.ndarray) -> dict[int, float]:
    """Per TTA level, the factor that puts 68.3% of validation residuals within ±sigma."""
    predictor.checkpoint.sigma_scale = {}
    images = data.images[torch.from_numpy(rows)]
    scales = {}
    for tta in TTA_TRANSFORMS:
        pred = predictor.predict_images(images, tta)
        ratio = np.abs(pred.mean - data.targets[rows]) / np.maximum(pred.sigma, 1e-9)
        scales[tta] = float(np.quantile(ratio, 0.6827))
    return scales


def test_metrics(predictor: Predictor, data: GalaxyData, rows: np.ndarray, tta: int) -> dict:
    """RMSE, NMAD and calibration on the test rows, without and with TTA."""
    from training.metrics import summarise

    results = {}
    if len(rows) == 0:
        return {"n_test": 0}
    images = data.images[torch.from_numpy(rows)]
    for n in sorted({1, tta}):
        pred = predictor.predict_images(images, n)
        results[f"tta{n}"] = {
            name: summarise(pred.mean[:, j], data.targets[rows, j], pred.sigma[:, j])
            for j, name in enumerate(pred.outputs)
        }
    return {"split": "test", "n": int(len(rows)), "results": results}


def write_history(out: Path, history: list[dict]) -> None:
    out.with_name(out.name + ".metrics.json").write_text(json.dumps(history, indent=1) + "\n")


def plot_history(out: Path, history: list[dict]) -> None:
    from training.figures import plot_loss_curve

    plot_loss_curve(history, out.with_name(out.name + ".loss.png"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", out="")
    a = parser.add_argument
    a("--data", required=True, help="folder with catalog.csv and images/")
    a("--out", required=True, help="checkpoint file to write, e.g. models/oh.pt")
    a("--target", action="append", dest="targets", help="catalog column (repeatable; oh_p50)")
    a("--size", type=int, help="resize images to this many pixels (default: as stored)")
    a("--pixel-scale", type=float, help="arcsec/px of the images (mock.json, else 0.296)")
    a("--bands", choices=["gri", "r"], default=d.bands, help="gri colour, or r band only")
    a("--init", default=d.init, help="scratch, imagenet or PATH to weights (default scratch)")
    a("--batch-size", type=int, default=d.batch_size)
    a("--lr", type=float, default=d.lr, help="head learning rate; body groups get 1/9, 1/3")
    a("--frozen-epochs", type=int, default=d.frozen_epochs, help="head-only epochs first")
    a("--cycles", type=int, default=d.cycles, help="SGDR cycles after unfreezing (3)")
    a("--cycle-len", type=int, default=d.cycle_len, help="epochs of the first cycle (1)")
    a("--cycle-mult", type=int, default=d.cycle_mult, help="cycle length factor (2)")
    a("--schedule", choices=["sgdr", "onecycle"], default=d.schedule)
    a("--optimizer", choices=["sgd", "adamw"], default=d.optimizer)
    a("--momentum", type=float, default=d.momentum)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--folds", type=int, default=d.folds, help="K > 1 trains a K-fold ensemble")
    a("--seed", type=int, default=d.seed, help="seed of weights, batches and augmentation")
    a("--split-seed", type=int, default=d.split_seed, help="seed of the train/valid/test split")
    a("--device", default=d.device, help="auto, cpu or cuda")
    a("--tta", type=int, choices=[1, 2, 4, 8], default=d.tta, help="TTA for test metrics")
    a("--limit", type=int, help="use only the first N galaxies")
    a("--max-steps", type=int, help="at most N batches per epoch (quick trials)")
    a("--resume", action="store_true", help="go on from OUT.last.pt (saved at each cycle end)")


def main(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.setdefault("targets", ["oh_p50"])
    cfg = TrainConfig(**values)
    if cfg.batch_size < 2:
        raise GalmetError("--batch-size must be at least 2 (BatchNorm needs two samples)")
    if cfg.lr <= 0 or cfg.cycles < 1 or cfg.cycle_len < 1 or cfg.cycle_mult < 1:
        raise GalmetError("--lr must be positive; --cycles, --cycle-len, --cycle-mult >= 1")
    if not math.isfinite(cfg.lr):
        raise GalmetError("--lr must be finite")
    ck = train(cfg)
    for variant, per_target in ck.metrics.get("results", {}).items():
        for name, m in per_target.items():
            print(
                f"test {variant} {name}: RMSE {m['rmse']:.4f}, NMAD {m['nmad']:.4f}, "
                f"within 1 sigma {m.get('calibration_1sigma', float('nan')):.3f}"
            )
    print(f"wrote {cfg.out} (+ .metrics.json, .loss.png)")
    return 0
