"""The trainer: one network fitted on given rows with the paper's schedule.

Phase 1 trains the head with the body frozen; phase 2 unfreezes everything and trains
three layer groups at learning rates in ratio 1/9 : 1/3 : 1. The schedule is SGDR: cosine
annealing per mini-batch, restarted at the start of each cycle, cycles of 1, 2, 4 …
epochs (``--cycles``, ``--cycle-len``, ``--cycle-mult``); ``--schedule onecycle`` is the
super-convergence variant. The prediction is trained with the RMSE loss; the sigma output
with a Gaussian likelihood on the detached prediction (see ``galmet.model``). Training
images get a random rotation/flip of the square; nothing else (size carries information).

Speed: the decoded images stay one uint8 tensor (on the GPU when they fit, else in host
memory gathered into pinned buffers; ``stage_images``); each batch is gathered,
rotated/flipped and normalised on the device; the loop reads nothing back from the GPU
until the epoch ends. On CUDA, bf16 autocast, channels_last and fused optimisers are on by
default; ``--compile`` adds ``torch.compile``. Under ``torchrun`` each rank trains its share
of every global batch in DistributedDataParallel (see ``training.distributed``).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from galmet.d4 import random_d4
from galmet.errors import GalmetError
from galmet.model import GalmetNet, build_model
from galmet.preprocess import normalise
from galmet.training import distributed
from galmet.training.config import TrainConfig
from galmet.training.dataset import GalaxyData, TargetScaler
from galmet.training.distributed import DistInfo

#: Learning-rate ratios of the three layer groups (early body, late body, head).
GROUP_LR_RATIOS = (1 / 9, 1 / 3, 1.0)
#: ``--data-on-device auto`` puts the images on the GPU when they take at most this
#: fraction of its free memory (the rest is for activations at large batches).
DATA_ON_DEVICE_FRACTION = 0.4


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
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per mini-batch.

    SGDR: cosine from each group's rate to 0 over a cycle, restarting at the next; cycle k
    lasts ``cycle_len * cycle_mult**k`` epochs. One-cycle: warm up then anneal over all
    ``epochs``, peaking at each group's rate. ``warmup_steps`` > 0 (SGDR only) ramps the rate
    up linearly over the first steps: a rate scaled up for a large batch diverges without.
    """
    if schedule == "sgdr" and warmup_steps > 0:
        first = cycle_len * steps_per_epoch

        def factor(step: int) -> float:
            length, start = first, 0
            while step >= start + length:  # which SGDR cycle the step is in
                start, length = start + length, length * cycle_mult
            cosine = 0.5 * (1 + math.cos(math.pi * (step - start) / length))
            return min(1.0, (step + 1) / warmup_steps) * cosine

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
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


def warmup_steps(cfg, steps_per_epoch: int) -> int:
    """Steps of linear warm-up after unfreezing: the first epoch's, when ``--lr-scale`` raised
    the rate above ``--lr`` (large batches); none otherwise, as in the paper."""
    return steps_per_epoch if cfg.head_lr() > cfg.lr else 0


def match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimiser state tensor its parameter's memory layout.

    A run saved with another layout (channels_last on a GPU, resumed NCHW, or the reverse)
    loads momentum buffers whose strides differ from their parameters'; fused and foreach
    optimiser kernels expect them alike.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


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
        if not (math.isfinite(train_loss) and math.isfinite(valid["loss"])):
            # Stop here: a diverged model must not be saved as the best one, nor go on.
            raise GalmetError(
                f"training diverged: {phase} epoch {epoch + 1} ended with a non-finite loss "
                f"(train {train_loss:g}, validation {valid['loss']:g}) at a head learning rate "
                f"of {cfg.head_lr():g}; lower --lr, or scale it less with the batch "
                "(--lr-scale sqrt or none)"
            )
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
            sched = make_scheduler(
                opt,
                self.steps_per_epoch,
                n,
                1,
                n,
                warmup_steps=warmup_steps(cfg, self.steps_per_epoch),
            )
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
            opt,
            self.steps_per_epoch,
            cfg.cycle_len,
            cfg.cycle_mult,
            cfg.epochs,
            cfg.schedule,
            warmup_steps=warmup_steps(cfg, self.steps_per_epoch),
        )
        if resume is not None and resume["optimizer"] is not None:
            opt.load_state_dict(resume["optimizer"])
            match_parameter_layout(opt)
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
