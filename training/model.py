"""The network, its checkpoint, and prediction with test-time augmentation.

One definition serves training, evaluation and the service: a torchvision ResNet-34 body
and the paper's head (concat of average and max pooling → BatchNorm → Dropout 0.25 →
Linear → ReLU → BatchNorm → Dropout 0.5 → Linear). Beyond the paper, the last layer gives
two numbers per target: the prediction and log sigma, its uncertainty. The prediction is
trained with the paper's RMSE loss; a separate linear layer on the head's detached hidden
features gives log sigma, trained by a Gaussian likelihood of the (detached) residual, so
the uncertainty never pulls on the prediction.

Only torch, torchvision and NumPy are imported here, so the service loads models without
the training code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from galmet.errors import GalmetError
from galmet.training.augment import tta_views
from galmet.training.preprocess import IMAGENET_MEAN, IMAGENET_STD, decode_batch, normalise

ARCHITECTURE = "resnet34"
CHECKPOINT_FORMAT = "galmet-checkpoint/1"


class ConcatPool(nn.Module):
    """Average and max pooling side by side (fastai's AdaptiveConcatPool2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class GalmetNet(nn.Module):
    """ResNet-34 body, the paper's head and a sigma layer; ``forward`` gives (prediction,
    log sigma), each (N, n_out), in normalised target units."""

    def __init__(self, n_out: int, hidden: int = 512, dropout: tuple[float, float] = (0.25, 0.5)):
        super().__init__()
        self.n_out = n_out
        # Residual branches start at zero (ImageNet weights overwrite this): a from-scratch
        # network then begins as a shallow one, and its activations stay tame.
        r = torchvision.models.resnet34(weights=None, zero_init_residual=True)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        features = 2 * r.fc.in_features
        self.head = nn.Sequential(
            ConcatPool(),
            nn.BatchNorm1d(features),
            nn.Dropout(dropout[0]),
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden, n_out),
        )
        # log sigma from the same hidden features, detached: the uncertainty learns from
        # what the prediction uses but never pulls on it.
        self.sigma = nn.Linear(hidden, n_out)
        nn.init.zeros_(self.sigma.weight)
        nn.init.zeros_(self.sigma.bias)

    def body(self) -> nn.Sequential:
        return nn.Sequential(self.stem, self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.head[:-1](self.body()(x))
        mean = self.head[-1](hidden).float()
        log_sigma = self.sigma(hidden.detach()).float()
        return mean, log_sigma.clamp(-7.0, 5.0)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Three groups for discriminative learning rates, as in the paper (fastai's split
        of a ResNet): stem + layer1 + layer2; layer3 + layer4; the head."""
        early = [self.stem, self.layer1, self.layer2]
        late = [self.layer3, self.layer4]
        return [
            [p for m in early for p in m.parameters()],
            [p for m in late for p in m.parameters()],
            list(self.head.parameters()) + list(self.sigma.parameters()),
        ]

    def load_body(self, resnet_state: dict[str, torch.Tensor]) -> None:
        """Load torchvision ResNet-34 weights (a ``resnet34`` state dict) into the body."""
        names = {"conv1": "stem.0", "bn1": "stem.1"}
        mapped = {}
        for key, value in resnet_state.items():
            prefix, _, rest = key.partition(".")
            if prefix == "fc":
                continue
            mapped[f"{names.get(prefix, prefix)}.{rest}"] = value
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        body_missing = [k for k in missing if not k.startswith(("head.", "sigma."))]
        if body_missing or unexpected:
            raise GalmetError(
                f"not ResNet-34 weights: missing {body_missing[:3]}, unexpected {unexpected[:3]}"
            )


def build_model(n_out: int, init: str = "scratch") -> GalmetNet:
    """A new network: ``init`` is ``scratch``, ``imagenet`` (torchvision's weights, downloaded
    once into torch's cache) or the path of a ResNet-34 state dict or a galmet checkpoint
    (its body is reused; the head starts fresh when the targets differ)."""
    model = GalmetNet(n_out)
    if init == "scratch":
        return model
    if init == "imagenet":
        weights = torchvision.models.ResNet34_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # urllib, hash and file errors all mean "not available"
            raise GalmetError(
                f"ImageNet weights could not be had ({type(exc).__name__}: {exc}); "
                "train with --init scratch, or pass a downloaded resnet34 .pth file as --init PATH"
            ) from None
        model.load_body(state)
        return model
    path = Path(init)
    if not path.exists():
        raise GalmetError(f"--init must be scratch, imagenet or an existing file; {init} is none")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["model_states"][0]
        body = {k: v for k, v in state.items() if not k.startswith(("head.", "sigma."))}
        model.load_state_dict(body, strict=False)
    elif isinstance(state, dict):
        model.load_body(state)
    else:
        raise GalmetError(f"{init} holds neither a galmet checkpoint nor a ResNet-34 state dict")
    return model


# --------------------------------------------------------------------------- checkpoint


@dataclass
class Checkpoint:
    """What a trained model is: weights plus everything needed to use it without the data.

    ``model_states`` holds one state dict, or K for a K-fold ensemble (predictions are
    averaged). ``target_mean``/``target_std`` undo the target normalisation;
    ``sigma_scale`` maps a TTA level (1, 2, 4, 8) to the factor that calibrates sigma on
    the validation split at that level (more copies add their spread to sigma).
    """

    outputs: list[str]
    target_mean: list[float]
    target_std: list[float]
    input_size: int
    bands: str
    model_states: list[dict[str, torch.Tensor]]
    sigma_scale: dict[int, float] = field(default_factory=dict)
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD
    architecture: str = ARCHITECTURE
    config: dict = field(default_factory=dict)
    split_seed: int = 0
    data: str = ""
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT} | self.__dict__

    def save(self, path: Path) -> None:
        """Write atomically: a crash never leaves a half-written checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            raw = torch.load(Path(path), map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise GalmetError(f"no model file {path}") from None
        except Exception as exc:
            raise GalmetError(f"{path} is not a readable checkpoint: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
            raise GalmetError(f"{path} is not a galmet checkpoint")
        raw = dict(raw)
        raw.pop("format")
        return cls(**raw)

    def models(self, device: torch.device | str = "cpu") -> list[GalmetNet]:
        """The network(s) in evaluation mode on ``device``."""
        nets = []
        for state in self.model_states:
            net = GalmetNet(len(self.outputs))
            net.load_state_dict(state)
            nets.append(net.to(device).eval())
        return nets


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file: the model version the service puts in its cache keys."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """Per-galaxy predictions in physical units, arrays of shape (N, T)."""

    outputs: list[str]
    mean: np.ndarray
    sigma: np.ndarray  # calibrated: model sigma and TTA/ensemble spread combined
    spread: np.ndarray  # standard deviation over the TTA copies (and ensemble members)


class Predictor:
    """A loaded checkpoint that turns images into predictions, with D4 test-time augmentation.

    The prediction is the mean over the ``tta`` transformed copies (and over ensemble
    members); sigma² = mean of the model's sigma² + the spread², times ``sigma_scale``².
    """

    def __init__(self, checkpoint: Checkpoint, device: str | torch.device = "cpu") -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.nets = checkpoint.models(self.device)
        if self.device.type == "cuda":
            self.nets = [n.to(memory_format=torch.channels_last) for n in self.nets]
        self._mean = np.asarray(checkpoint.target_mean)
        self._std = np.asarray(checkpoint.target_std)

    @classmethod
    def from_file(cls, path: Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(Checkpoint.load(path), device)

    @property
    def input_size(self) -> int:
        return self.checkpoint.input_size

    @torch.inference_mode()
    def predict_images(
        self, images: torch.Tensor, tta: int = 1, batch_size: int = 256
    ) -> Prediction:
        """Predictions for a uint8 batch (N, 3, H, W) or (N, H, W, 3)."""
        ck = self.checkpoint
        means, sigmas, spreads = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(self.device, non_blocking=True)
            x = normalise(chunk, ck.bands, ck.input_mean, ck.input_std)
            views = tta_views(x, tta)
            if self.device.type == "cuda":
                views = views.contiguous(memory_format=torch.channels_last)
            mu_all, var_all = [], []
            for net in self.nets:
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self._bf16()):
                    mu, log_sigma = net(views)
                mu_all.append(mu.float().view(tta, len(chunk), -1))
                var_all.append(torch.exp(2 * log_sigma.float()).view(tta, len(chunk), -1))
            mu = torch.cat(mu_all)
            spread = mu.std(dim=0, unbiased=False)
            var = torch.cat(var_all).mean(dim=0) + spread**2
            means.append(mu.mean(dim=0).cpu())
            sigmas.append((var.sqrt() * self.sigma_scale(tta)).cpu())
            spreads.append(spread.cpu())
        mean = torch.cat(means).numpy() * self._std + self._mean
        sigma = torch.cat(sigmas).numpy() * self._std
        spread = torch.cat(spreads).numpy() * self._std
        return Prediction(list(ck.outputs), mean, sigma, spread)

    def predict_bytes(self, images: Sequence[bytes], tta: int = 1) -> Prediction:
        """Predictions for encoded images (JPEG/PNG), each resized to the model's input.

        On a GPU the JPEGs are decoded there in one batch (``decode_batch``); on the CPU
        each goes through ``decode_image``, as in training.
        """
        return self.predict_images(decode_batch(images, self.input_size, self.device), tta)

    def sigma_scale(self, tta: int) -> float:
        """Calibration factor of sigma at this TTA level (nearest calibrated level; 1 if none)."""
        scales = self.checkpoint.sigma_scale
        if not scales:
            return 1.0
        return scales[min(scales, key=lambda level: abs(level - tta))]

    def _bf16(self) -> bool:
        return self.device.type == "cuda"
