"""The network, its checkpoint, and prediction with test-time augmentation.

One definition serves training, evaluation and the service: a torchvision ResNet-34 body
and the paper's head (concat of average and max pooling → BatchNorm → Dropout 0.25 →
Linear → ReLU → BatchNorm → Dropout 0.5 → Linear). Beyond the paper, the last layer gives
two numbers per target: the prediction and log sigma, its uncertainty. The prediction is
trained with the paper's RMSE loss; a separate linear layer on the head's detached hidden
features gives log sigma, trained by a Gaussian likelihood of the (detached) residual, so
the uncertainty never pulls on the prediction.

Only torch and torchvision are imported here, so the service loads models without the
training code; prediction is ``galmet.predictor``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from galmet.errors import GalmetError
from galmet.files import atomic_path
from galmet.preprocess import IMAGENET_MEAN, IMAGENET_STD

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
        mean, log_sigma, _ = self.forward_features(x)
        return mean, log_sigma

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, log sigma, pooled features): the last is the head's input, (N, 1024),
        whose training-set statistics give the out-of-distribution score."""
        pooled = self.head[0](self.body()(x))
        hidden = self.head[1:-1](pooled)
        mean = self.head[-1](hidden).float()
        log_sigma = self.sigma(hidden.detach()).float()
        return mean, log_sigma.clamp(-7.0, 5.0), pooled

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

    ``ood`` (empty in checkpoints from before it existed: their predictions have no
    out-of-distribution score) holds the statistics of the head's input, the pooled features,
    on the training images: ``members``, one ``{"mean": (F,), "precision": (F, F)}`` per
    model state (float32 tensors; a Ledoit-Wolf shrunk covariance, inverted), and
    ``threshold``, per TTA level the 99th percentile of the validation split's scores
    (``galmet.predictor.ood_scores``), above which a prediction is flagged
    ``out_of_distribution``; ``quantile`` (0.99) and ``n_train``/``n_valid`` say how.

    ``bf16_check`` (empty when not measured) is ``{"max_dex", "n", "split"}``: the largest
    |bfloat16 − float32| of any output, in physical units, over the validation images at
    TTA 1, measured at the end of training; a CPU predicts in bf16 only when it is small
    (``galmet.predictor.default_bf16``).
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
    ood: dict = field(default_factory=dict)
    bf16_check: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT} | self.__dict__

    def save(self, path: Path) -> None:
        """Write atomically: a crash never leaves a half-written checkpoint."""
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

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
