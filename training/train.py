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

Speed: the decoded images stay one uint8 tensor (on the GPU when they fit, else in host
memory gathered into pinned buffers); each batch is gathered, rotated/flipped and
normalised on the device; the loop reads nothing back from the GPU until the epoch ends.
On CUDA, bf16 autocast, channels_last and fused optimisers are on by default (``--no-bf16``,
``--no-channels-last`` turn them off); ``--compile`` adds ``torch.compile``. Larger
batches may scale the learning rate (``--lr-scale linear``: lr × batch / 64). Under
``torchrun`` it trains with DistributedDataParallel (see ``training.distributed``);
``--batch-size`` is then the global batch, split evenly over the processes.
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

from galmet.d4 import TTA_LEVELS, TTA_TRANSFORMS, random_d4
from galmet.device import pick_device
from galmet.errors import GalmetError
from galmet.files import atomic_path
from galmet.model import Checkpoint, GalmetNet, build_model
from galmet.predictor import Predictor
from galmet.preprocess import normalise
from galmet.training import distributed
from galmet.training.dataset import (
    GalaxyData,
    TargetScaler,
    kfold_indices,
    load_data,
    split_indices,
)
from galmet.training.distributed import DistInfo

#: Learning-rate ratios of the three layer groups (early body, late body, head).
GROUP_LR_RATIOS = (1 / 9, 1 / 3, 1.0)
#: ``--lr-scale`` rules: the head's rate is ``lr * (batch / reference batch) ** power``.
LR_SCALES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
#: ``--data-on-device auto`` puts the images on the GPU when they take at most this
#: fraction of its free memory (the rest is for activations at large batches).
DATA_ON_DEVICE_FRACTION = 0.4


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
    batch_size: int = 256  # over all processes when under torchrun
    lr: float = 0.01  # of the head; the body groups get 1/9 and 1/3 (0.1 diverged on the mock)
    # The head's rate is lr * f(batch_size / lr_reference_batch): f = 1 (none), the ratio
    # (linear, Goyal et al. 2017) or its square root; lr_effective records the result.
    lr_scale: str = "none"
    lr_reference_batch: int = 64
    lr_effective: float | None = None  # set by train()
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
    # Speed; None means "on CUDA only". None of these changes what is learned (bf16 a little).
    bf16: bool | None = None  # autocast the forward pass to bfloat16
    channels_last: bool | None = None  # NHWC memory format for model and batches
    compile: bool = False  # torch.compile the model for training
    compile_backend: str = "inductor"  # eager / aot_eager trace without code generation
    data_on_device: str = "auto"  # images on the GPU: auto (when they fit), yes, no
    world_size: int = 1  # processes that trained (torchrun); set by train()

    @property
    def epochs(self) -> int:
        return sum(self.cycle_len * self.cycle_mult**c for c in range(self.cycles))

    def head_lr(self) -> float:
        """The head's learning rate after ``lr_scale`` (the body groups get 1/9 and 1/3)."""
        if self.lr_scale not in LR_SCALES:
            raise GalmetError(f"--lr-scale must be one of {', '.join(LR_SCALES)}")
        return self.lr * (self.batch_size / self.lr_reference_batch) ** LR_SCALES[self.lr_scale]


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


def resolve_flag(value: bool | None, device: torch.device) -> bool:
    """A speed flag's value: as given, or on CUDA only when unset."""
    return device.type == "cuda" if value is None else bool(value)


def stage_images(images: torch.Tensor, device: torch.device, mode: str = "auto") -> torch.Tensor:
    """Where the training images live: on ``device`` (a GPU) or in host memory.

    ``auto`` moves them to the GPU when they take at most ``DATA_ON_DEVICE_FRACTION`` of
    its free memory; ``yes`` always (an error if they do not fit); ``no`` never. On the
    CPU they are already where the model is.
    """
    if mode not in ("auto", "yes", "no"):
        raise GalmetError(f"--data-on-device must be auto, yes or no, not {mode!r}")
    if device.type != "cuda" or mode == "no":
        return images
    if mode == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes > DATA_ON_DEVICE_FRACTION * free:
            return images
    try:
        return images.to(device)
    except torch.OutOfMemoryError:
        raise GalmetError(
            f"--data-on-device yes: the images ({images.nbytes / 1e9:.1f} GB) do not fit on "
            f"{device}; use --data-on-device auto or no"
        ) from None


class Trainer:
    """Fits one network on given rows; ``fit`` runs both phases of the schedule.

    ``data.images`` may be in host memory or already on ``device`` (``stage_images``).
    Under torchrun, ``dist`` says which rank this is: every rank builds the same network
    and draws the same permutation, and trains its share of each global batch.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: GalaxyData,
        scaler: TargetScaler,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        device: torch.device,
        fold: int = 0,
        dist: DistInfo | None = None,
    ) -> None:
        self.cfg, self.data, self.device, self.fold = cfg, data, device, fold
        self.dist = dist or DistInfo()
        self.scaler = scaler
        self.train_rows, self.valid_rows = train_rows, valid_rows
        self.images = data.images
        self.images_on_device = data.images.device.type == device.type
        # Targets are small: on the device once, indexed there with the batch's rows.
        self.y = torch.from_numpy(scaler.transform(data.targets)).float().to(device)
        self.bf16 = resolve_flag(cfg.bf16, device)
        self.channels_last = resolve_flag(cfg.channels_last, device)
        self.model: GalmetNet = build_model(len(data.target_names), cfg.init).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward: nn.Module | None = None  # DDP and/or compiled view of the model
        # The permutation's generator is the same on every rank (they must agree on the
        # batches). The augmentation draws on the device, from a generator seeded per rank
        # and epoch; alone on the CPU it draws from the permutation's, so that CPU runs
        # repeat those of earlier versions exactly.
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + fold)
        alone_on_cpu = device.type == "cpu" and not self.dist.enabled
        self.aug_generator = self.generator if alone_on_cpu else torch.Generator(device=device)
        self.history: list[dict] = []
        self.best: dict | None = None  # {"valid_loss", "epoch", "state"}
        # Whole batches only: a last batch of one image would break BatchNorm.
        self.steps_per_epoch = max(1, len(train_rows) // cfg.batch_size)
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)

    def forward_module(self) -> nn.Module:
        """The module the training step calls: the model, wrapped in DDP under torchrun,
        compiled with ``--compile``. Built on first use after each change of which
        parameters train (DDP registers only those that need gradients)."""
        if self._forward is None:
            module: nn.Module = self.model
            if self.dist.enabled:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                module = DistributedDataParallel(module, device_ids=ids)
            if self.cfg.compile:
                # DDP first, then compile: what PyTorch documents for DDP with Dynamo.
                module = torch.compile(module, backend=self.cfg.compile_backend)
            self._forward = module
        return self._forward

    def _to_device(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images of ``rows`` (on the images' device) on the model's device. From host
        memory (to a GPU: on the CPU the images are always "on the device") they are gathered
        straight into pinned memory, so the copy runs asynchronously; the caching host
        allocator keeps each buffer until its copy has finished."""
        if self.images_on_device:
            return self.images.index_select(0, rows)
        buf = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
        torch.index_select(self.images, 0, rows, out=buf)
        return buf.to(self.device, non_blocking=True)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images, self.cfg.bands)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # One training batch: uint8 images to the device, random D4 there, normalise.
    def _batch(
        self, rows: torch.Tensor, rows_dev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._to_device(rows_dev if self.images_on_device else rows)
        x = self._inputs(random_d4(x, self.aug_generator))
        return x, self.y.index_select(0, rows_dev)

    def run_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, scheduler, phase: str
    ) -> dict:
        cfg, dist = self.cfg, self.dist
        # The frozen body stays in train mode, as fastai's does: its weights do not move, but
        # its BatchNorm statistics follow the data (from scratch they are only placeholders).
        self.model.train()
        forward = self.forward_module()
        rows = torch.from_numpy(self.train_rows)
        perm = rows[torch.randperm(len(rows), generator=self.generator)]
        perm_dev = perm.to(self.device, non_blocking=True)
        if self.aug_generator is not self.generator:
            seed = np.random.SeedSequence([cfg.seed, self.fold, dist.rank, epoch])
            self.aug_generator.manual_seed(int(seed.generate_state(1)[0]))
        bs = min(cfg.batch_size, len(rows))  # over all ranks
        start = time.perf_counter()
        total = torch.zeros((), device=self.device)
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"{phase} epoch {epoch + 1}" + (f" fold {self.fold + 1}" if cfg.folds > 1 else ""),
            unit="batch",
            leave=False,
            disable=not dist.is_main,
        )
        # Nothing in this loop reads a value back from the device (no .item(), no printing
        # of the loss): on a GPU the host queues work ahead and never waits for it.
        first_lrs: list[float] = []
        for step in bar:
            part = distributed.local_batch(step, bs, len(perm), dist)
            x, y = self._batch(perm[part], perm_dev[part])
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                mean, log_sigma = forward(x)
            loss, rmse = loss_fn(mean, log_sigma, y, cfg.sigma_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lrs = [g["lr"] for g in optimizer.param_groups]  # before a restart resets them
            first_lrs = first_lrs or lrs
            scheduler.step()
            total += rmse.detach()
        # The epoch's one synchronisation: the mean RMSE over steps and ranks.
        train_loss = distributed.all_reduce_sum(total, dist).item() / (
            self.steps_per_epoch * dist.world_size
        )
        seconds = time.perf_counter() - start
        distributed.average_buffers(self.model, dist)
        valid = self.validate()
        images = self.steps_per_epoch * (bs // dist.world_size) * dist.world_size
        record = {
            "epoch": epoch + 1,
            "phase": phase,
            "fold": self.fold,
            "train_loss": train_loss,
            "valid_loss": valid["loss"],
            "valid_rmse": valid["rmse"],
            "lr": lrs[-1],  # of the head, at the epoch's last batch
            # Each optimiser group's rate (early body, late body, head; the head alone while
            # the body is frozen) at the epoch's first and last batch: SGDR restarts show as a
            # first rate back at the peak.
            "group_lr": {"first": first_lrs, "last": lrs},
            "seconds": seconds,
            "images_per_second": images / seconds,  # over all ranks
        }
        self.history.append(record)
        if dist.is_main:
            tqdm.write(
                f"{phase} epoch {epoch + 1}: train RMSE {train_loss:.4f}, valid "
                f"{valid['loss']:.4f} (normalised), {images / seconds:.0f} images/s"
            )
        if self.best is None or valid["loss"] < self.best["valid_loss"]:
            self.best = {
                "valid_loss": valid["loss"],
                "epoch": epoch + 1,
                "state": copy.deepcopy({k: v.cpu() for k, v in self.model.state_dict().items()}),
            }
        return record

    @torch.inference_mode()
    def validate(self) -> dict:
        """RMSE on the validation rows (no TTA): normalised loss and per-target dex.

        Under torchrun each rank takes every world_size-th row and the sums are added up,
        so every rank gets the same numbers."""
        self.model.eval()
        rows = torch.from_numpy(self.valid_rows[self.dist.rank :: self.dist.world_size])
        rows_dev = rows.to(self.device)
        sq = torch.zeros(self.y.shape[1], device=self.device)
        for start in range(0, len(rows), 512):
            part = slice(start, start + 512)
            x = self._to_device(rows_dev[part] if self.images_on_device else rows[part])
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                mean, _ = self.model(self._inputs(x))
            sq += ((mean.float() - self.y.index_select(0, rows_dev[part])) ** 2).sum(dim=0)
        mse = distributed.all_reduce_sum(sq, self.dist).cpu() / max(1, len(self.valid_rows))
        std = torch.from_numpy(self.scaler.std).float()
        return {
            "loss": float(torch.sqrt(mse.mean())),
            "rmse": dict(zip(self.data.target_names, (mse.sqrt() * std).tolist(), strict=True)),
        }

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
        lr = cfg.head_lr()
        done = 0
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.generator.set_state(resume["generator"])
            self.history, self.best, done = resume["history"], resume["best"], resume["epoch"]
        epoch = done
        if done < cfg.frozen_epochs:
            for p in groups[0] + groups[1]:
                p.requires_grad_(False)
            self._forward = None
            opt = make_optimizer([groups[2]], [lr], cfg, self.device)
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
        self._forward = None
        lrs = [lr * r for r in GROUP_LR_RATIOS]
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
    from galmet.training.metrics import summarise

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
    from galmet.training.figures import plot_loss_curve

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
    a(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="images per step (over all processes under torchrun)",
    )
    a("--lr", type=float, default=d.lr, help="head learning rate; body groups get 1/9, 1/3")
    a(
        "--lr-scale",
        choices=list(LR_SCALES),
        default=d.lr_scale,
        help="scale --lr with the batch: linear = lr x batch / reference batch (none)",
    )
    a("--lr-reference-batch", type=int, default=d.lr_reference_batch, help="batch of --lr (64)")
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
    a("--tta", type=int, choices=TTA_LEVELS, default=d.tta, help="TTA for test metrics")
    a("--limit", type=int, help="use only the first N galaxies")
    a("--max-steps", type=int, help="at most N batches per epoch (quick trials)")
    a("--resume", action="store_true", help="go on from OUT.last.pt (saved at each cycle end)")
    speed = argparse.BooleanOptionalAction
    a("--bf16", action=speed, help="bfloat16 autocast (default: on CUDA only)")
    a("--channels-last", action=speed, help="NHWC memory format (default: on CUDA only)")
    a("--compile", action="store_true", help="torch.compile the model (slow to start)")
    a(
        "--compile-backend",
        choices=["inductor", "aot_eager", "eager", "cudagraphs"],
        default=d.compile_backend,
        help="torch.compile backend (inductor; eager ones only trace, for debugging)",
    )
    a(
        "--data-on-device",
        choices=["auto", "yes", "no"],
        default=d.data_on_device,
        help="keep the images on the GPU: auto = when they fit in 40%% of its free memory",
    )


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
