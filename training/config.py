"""A training run's configuration: every knob of ``galmet train``, stored in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

from galmet.errors import GalmetError

#: ``--lr-scale`` rules: the head's rate is ``lr * (batch / reference batch) ** power``.
LR_SCALES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


@dataclass
class TrainConfig:
    """Every knob of a training run; stored in the checkpoint."""

    data: str
    out: str
    targets: list[str] = field(default_factory=lambda: ["oh_p50"])
    size: int | None = None  # resize images to this many pixels; None keeps their size
    pixel_scale: float | None = None  # arcsec/px of the stored images (mock.json, else 0.296)
    image_size: int | None = None  # pixels of the stored images, before any resizing
    # The cutout recipe of the stored images (galmet.scale_mode): fixed, or petro (each at
    # 2*petroR90_r/0.396/size arcsec/px). None: mock.json's, else fixed. Set by train().
    scale_mode: str | None = None
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
        """Epochs after unfreezing: the SGDR cycles' lengths added up."""
        return sum(self.cycle_len * self.cycle_mult**c for c in range(self.cycles))

    def head_lr(self) -> float:
        """The head's learning rate after ``lr_scale`` (the body groups get 1/9 and 1/3)."""
        if self.lr_scale not in LR_SCALES:
            raise GalmetError(f"--lr-scale must be one of {', '.join(LR_SCALES)}")
        return self.lr * (self.batch_size / self.lr_reference_batch) ** LR_SCALES[self.lr_scale]
