"""Prediction from a checkpoint: D4 test-time augmentation, ensembles, calibrated sigma,
and an out-of-distribution score.

``Predictor`` is what training's evaluation, ``galmet predict``, the service and the worker
all run. ``predict_arrays`` turns decoded images into prediction records (the raw form the
cache stores; ``galmet.record`` maps them to the fields users see), and ``fetch_geometry``
says which SkyServer cutout a model needs, so that it sees what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from galmet.d4 import check_tta, tta_views
from galmet.errors import GalmetError
from galmet.image_stats import image_statistics
from galmet.model import Checkpoint
from galmet.preprocess import decode_batch, normalise
from galmet.scale_mode import petro_scale, recorded_scale_mode
from galmet.skyserver import DEFAULT_SCALE, DEFAULT_SIZE, MAX_SIZE, MIN_SIZE

#: TTA copies on the CPU when none is configured: 4. Measured on this project's 2-core
#: CPU (bench/infer_throughput.py, JPEG bytes to predictions, batches of 64, one torch
#: thread on a CPU shared with other jobs), images/s at TTA 1 / 2 / 4 / 8:
#:   32 px (the demo model's input): 498 / 263 / 153 / 83   (two threads: 986 / - / 331 / 166)
#:   128 px (a full-size model):       37 /  16 / 7.6 / 3.6
#: What the copies buy, demo model (3000 mock galaxies, 32 px), test RMSE of oh_p50 on 1000
#: held-out galaxies (std 0.133 dex): 0.0936 / 0.0885 / 0.0861 / 0.0860; other demo
#: trainings agreed (TTA 4 gains 1-8 %, TTA 8 under 1 % more). So 4: nearly all the gain at
#: half the cost of 8, and the demo still runs 150+ images/s on one busy core, far above the
#: 10 cutouts/s the service fetches from SkyServer. A full-size model on a CPU does ~8
#: images/s per core at TTA 4: set GALMET_TTA=1 or 2 there if throughput matters more.
TTA_CPU = 4
#: Views (images × TTA copies) in one forward pass on the CPU. One huge pass is slower than
#: several small ones: a ResNet-34 at 128 px on this project's 2-core CPU (AMX, bf16,
#: channels_last) runs 250 / 350 / 375 / 290 views/s at 8 / 32 / 128 / 512 views per pass
#: (float32 NCHW: 110 / 115 / 95 / 75), the large passes' activations spilling out of the
#: caches and into fresh pages (20 M page faults). A batch of 64 images at TTA 8 was one
#: 512-view pass, and slower than one image at a time (8 views); 64 views per pass keeps the
#: fast middle at every TTA level (bench/infer_throughput.py prints both paths).
CPU_VIEWS_PER_PASS = 64
#: How far bf16 may move a prediction from float32 (dex, issue 13): far below the model's
#: own error (0.08 dex). Measured with a ResNet-34 at 64 px trained on 6,000 mock galaxies
#: (bench/accuracy.py): see the README. Small, barely trained models move more (0.02 dex
#: for one trained 8 epochs on 111 galaxies), so the check is per model, at training's end.
BF16_TOLERANCE_DEX = 0.005
#: The validation deviation under which a CPU predicts in bf16: half the tolerance, a margin
#: for the galaxies the check never saw.
BF16_SAFE_DEX = BF16_TOLERANCE_DEX / 2
#: TTA copies on a GPU when none is configured: all eight, as in the paper (≈6 ms/image on
#: a P100).
TTA_GPU = 8


def default_tta(device: str | torch.device, configured: int | None = None) -> int:
    """TTA copies to use: ``configured`` if given, else ``TTA_GPU`` on CUDA, ``TTA_CPU`` on a
    CPU."""
    if configured is not None:
        return check_tta(configured)
    return TTA_GPU if torch.device(device).type == "cuda" else TTA_CPU


# ------------------------------------------------------------------------------ geometry
#: Why a petro-scaled model cannot fetch a cutout: the one line users see.
PETRO_NEEDED = (
    "this model was trained on petro-scaled cutouts and needs the galaxy's petroR90_r; "
    "no SDSS galaxy with one was identified here"
)


def training_geometry(ck: Checkpoint, scale: float | None = None) -> tuple[int, float]:
    """(pixels, arcsec per pixel) of the images the model was trained on, before resizing.

    The scale is ``scale`` if given, else the checkpoint config's ``pixel_scale`` (or
    ``scale``), else the design's 0.296″/px. The size is the config's ``image_size`` if
    recorded; else the model's input size when training kept the images' size (no
    ``--size``); else the design's 128 px, which ``--size`` then resized.
    """
    cfg = ck.config or {}
    if scale is None:
        scale = cfg.get("pixel_scale") or cfg.get("scale") or DEFAULT_SCALE
    if not scale > 0:
        raise GalmetError("--scale must be positive (arcsec per pixel)")
    size = cfg.get("image_size") or (DEFAULT_SIZE if cfg.get("size") else ck.input_size)
    return int(size), float(scale)


def fetch_geometry(
    ck: Checkpoint, scale: float | None = None, petro_r90: float | None = None
) -> tuple[int, float]:
    """(pixels, arcsec per pixel) of the SkyServer cutout to fetch for the model.

    A model trained on petro-scaled cutouts (``galmet.scale_mode``) needs the galaxy's
    ``petro_r90`` (petroR90_r, arcsec) unless ``scale`` is given: without it, a
    ``GalmetError`` saying so.

    The model must see what it saw in training: the field of view and pixel scale of the
    training images, and the one resizing step of training (``decode_image``, bilinear) to
    the model's input size. For a model trained on 128 px cutouts at 0.296″/px resized to
    64 px, that means fetching 128 px at 0.296″/px and resizing here, not asking SkyServer
    for 64 px at 0.592″/px (SkyServer's own resampling and JPEG coding of a coarser image
    are not the pixels the model learned from). A size outside SkyServer's 64…2048 px is
    fetched at the nearest allowed size over the same field (the scale changes accordingly).
    """
    fetch = min(max(training_geometry(ck, scale)[0], MIN_SIZE), MAX_SIZE)
    if scale is None and recorded_scale_mode(ck.config) == "petro":
        if petro_r90 is None:
            raise GalmetError(PETRO_NEEDED)
        return fetch, petro_scale(petro_r90, fetch)
    size, scale = training_geometry(ck, scale)
    return fetch, scale * size / fetch


@dataclass
class Prediction:
    """Per-galaxy predictions in physical units, arrays of shape (N, T)."""

    outputs: list[str]
    mean: np.ndarray
    sigma: np.ndarray  # calibrated: model sigma and TTA/ensemble spread combined
    spread: np.ndarray  # standard deviation over the TTA copies (and ensemble members)
    ood_score: np.ndarray | None = None  # (N,); None for a checkpoint without feature stats
    #: The score's two parts before they are combined, (N,) each: the network features' and
    #: the pixel statistics' (None for a checkpoint without pixel statistics).
    ood_features: np.ndarray | None = None
    ood_pixels: np.ndarray | None = None


def ood_scores(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """The out-of-distribution score of each row of ``features`` (N, F): its Mahalanobis
    distance from the training features' ``mean`` under their (shrunk) ``precision``, divided
    by √F, so that a typical training galaxy scores about 1 whatever the feature count."""
    d = features.float() - mean
    d2 = ((d @ precision) * d).sum(dim=1).clamp_min(0.0)
    return (d2 / d.shape[1]).sqrt()


class Predictor:
    """A loaded checkpoint that turns images into predictions, with D4 test-time augmentation.

    The prediction is the mean over the ``tta`` transformed copies (and over ensemble
    members); sigma² = mean of the model's sigma² + the spread², times ``sigma_scale``².

    The out-of-distribution score (``ood_scores``, when the checkpoint has the statistics of
    the head's input on its training set) is the mean of the copies' scores (and of the
    members', each against its own training statistics), not the score of the mean features:
    each copy is then judged on the scale the threshold was set on, and a copy that looks
    unlike the training set is not averaged away before it is measured. Where the checkpoint
    also has the training set's pixel statistics (``galmet.image_stats``) and their own
    validation threshold, the score is the larger of that and the image's distance in those
    statistics scaled so that the two thresholds coincide: each part flags what it alone
    would, and neither part's tail moves the other's threshold.
    """

    def __init__(
        self, checkpoint: Checkpoint, device: str | torch.device = "cpu", bf16: bool | None = None
    ) -> None:
        """``bf16``: autocast the forward pass to bfloat16; None: ``default_bf16``."""
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.bf16 = default_bf16(checkpoint, self.device) if bf16 is None else bf16
        # NHWC on the CPU too: oneDNN's convolutions run faster on it, 1.6x under bf16.
        self.memory_format = torch.channels_last
        self.nets = [n.to(memory_format=self.memory_format) for n in checkpoint.models(self.device)]
        self._mean = np.asarray(checkpoint.target_mean)
        self._std = np.asarray(checkpoint.target_std)
        members = (checkpoint.ood or {}).get("members") or []
        self._ood_stats = None
        if len(members) == len(self.nets):
            self._ood_stats = [
                (m["mean"].float().to(self.device), m["precision"].float().to(self.device))
                for m in members
            ]
        image = (checkpoint.ood or {}).get("image")
        self._image_stats = None
        if image is not None and self._ood_stats is not None:
            self._image_stats = (
                image["mean"].float().to(self.device),
                image["precision"].float().to(self.device),
            )

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
        means, sigmas, spreads, scores, pixel_scores = [], [], [], [], []
        step = self._images_per_pass(tta, batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step].to(self.device, non_blocking=True)
            x = normalise(chunk, ck.bands, ck.input_mean, ck.input_std)
            views = tta_views(x, tta).contiguous(memory_format=self.memory_format)
            mu_all, var_all, score_all = [], [], []
            for k, net in enumerate(self.nets):
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                    mu, log_sigma, pooled = net.forward_features(views)
                mu_all.append(mu.float().view(tta, len(chunk), -1))
                var_all.append(torch.exp(2 * log_sigma.float()).view(tta, len(chunk), -1))
                if self._ood_stats is not None:
                    score = ood_scores(pooled, *self._ood_stats[k])
                    score_all.append(score.view(tta, len(chunk)))
            mu = torch.cat(mu_all)
            spread = mu.std(dim=0, unbiased=False)
            var = torch.cat(var_all).mean(dim=0) + spread**2
            means.append(mu.mean(dim=0).cpu())
            sigmas.append((var.sqrt() * self.sigma_scale(tta)).cpu())
            spreads.append(spread.cpu())
            if score_all:
                scores.append(torch.cat(score_all).mean(dim=0).cpu())
                if self._image_stats is not None:
                    stats = image_statistics(x, ck.input_mean, ck.input_std)
                    pixel_scores.append(ood_scores(stats, *self._image_stats).cpu())
        mean = torch.cat(means).numpy() * self._std + self._mean
        sigma = torch.cat(sigmas).numpy() * self._std
        spread = torch.cat(spreads).numpy() * self._std
        features = torch.cat(scores).numpy() if scores else None
        pixels = torch.cat(pixel_scores).numpy() if pixel_scores else None
        ood = self._combined(features, pixels, tta)
        return Prediction(list(ck.outputs), mean, sigma, spread, ood, features, pixels)

    def _combined(
        self, features: np.ndarray | None, pixels: np.ndarray | None, tta: int
    ) -> np.ndarray | None:
        """The score: the features' part, or, once both parts have thresholds, the larger of
        it and the pixel part put on its scale (each part's threshold at the same value), so
        that either part alone crosses the flag's threshold where it would on its own."""
        image = (self.checkpoint.ood or {}).get("image") or {}
        feature_threshold = self.ood_threshold(tta)
        if features is None or pixels is None or not image.get("threshold"):
            return features
        if feature_threshold is None:
            return features
        return np.maximum(features, pixels * (feature_threshold / image["threshold"]))

    @torch.inference_mode()
    def pooled_features(self, images: torch.Tensor, batch_size: int = 256) -> list[np.ndarray]:
        """The head's input (pooled body features), float32 (N, F), of each ensemble member
        for a uint8 batch, without augmentation: what the OOD statistics are fitted on."""
        ck = self.checkpoint
        out: list[list[np.ndarray]] = [[] for _ in self.nets]
        step = self._images_per_pass(1, batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step].to(self.device, non_blocking=True)
            x = normalise(chunk, ck.bands, ck.input_mean, ck.input_std)
            x = x.contiguous(memory_format=self.memory_format)
            for k, net in enumerate(self.nets):
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                    _, _, pooled = net.forward_features(x)
                out[k].append(pooled.float().cpu().numpy())
        return [np.concatenate(parts) for parts in out]

    def predict_bytes(self, images: Sequence[bytes], tta: int = 1) -> Prediction:
        """Predictions for encoded images (JPEG/PNG), each resized to the model's input.

        On a GPU the JPEGs are decoded there in one batch (``decode_batch``); on the CPU
        each goes through ``decode_image``, as in training.
        """
        return self.predict_images(decode_batch(images, self.input_size, self.device), tta)

    def predict_arrays(self, images: list[np.ndarray], tta: int) -> list[dict]:
        """Prediction records for decoded RGB uint8 images (size, size, 3), in order.

        A record is ``{"outputs": {name: value}, "sigma": {…}, "tta_spread": {…},
        "ood_score": float | None, "out_of_distribution": bool}``, values in physical units
        (dex) keyed by the checkpoint's output names; ``galmet.record`` turns it into the
        public fields. ``ood_score`` is None (and the flag false) for a checkpoint without
        feature statistics.
        """
        check_tta(tta)
        if not images:
            return []
        check_images(images, self.input_size)
        batch = torch.from_numpy(np.stack(images))
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy to the GPU overlap
        pred = self.predict_images(batch, tta)
        names = pred.outputs
        scores = [None] * len(images) if pred.ood_score is None else pred.ood_score.tolist()
        return [
            {
                "outputs": {n: float(pred.mean[i, j]) for j, n in enumerate(names)},
                "sigma": {n: float(pred.sigma[i, j]) for j, n in enumerate(names)},
                "tta_spread": {n: float(pred.spread[i, j]) for j, n in enumerate(names)},
                "ood_score": scores[i],
                "out_of_distribution": self.is_out_of_distribution(scores[i], tta),
            }
            for i in range(len(images))
        ]

    def ood_threshold(self, tta: int) -> float | None:
        """The score above which a prediction at this TTA level is out of distribution (the
        nearest calibrated level's); None for a checkpoint without one."""
        levels = (self.checkpoint.ood or {}).get("threshold") or {}
        if not levels or self._ood_stats is None:
            return None
        return float(levels[min(levels, key=lambda level: abs(level - tta))])

    def is_out_of_distribution(self, score: float | None, tta: int) -> bool:
        """Whether ``score`` is above the checkpoint's threshold at this TTA level."""
        threshold = self.ood_threshold(tta)
        return score is not None and threshold is not None and score > threshold

    def sigma_scale(self, tta: int) -> float:
        """Calibration factor of sigma at this TTA level (nearest calibrated level; 1 if none)."""
        scales = self.checkpoint.sigma_scale
        if not scales:
            return 1.0
        return scales[min(scales, key=lambda level: abs(level - tta))]

    def _images_per_pass(self, tta: int, batch_size: int) -> int:
        """Images per forward pass: ``batch_size`` on a GPU; on the CPU no more than
        ``CPU_VIEWS_PER_PASS`` views (images × TTA copies), whatever the batch."""
        if self.device.type == "cuda":
            return batch_size
        return max(1, min(batch_size, CPU_VIEWS_PER_PASS // tta))


def default_bf16(checkpoint: Checkpoint, device: str | torch.device) -> bool:
    """Whether a predictor runs the forward pass in bfloat16 unless told: on CUDA, yes; on a
    CPU, where it runs bf16 natively (``native_bf16``) and training measured the model's
    bf16 deviation (``Checkpoint.bf16_check``) at most ``BF16_SAFE_DEX``. A model whose
    predictions bf16 moves more, or one trained before the check existed, stays float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    deviation = (checkpoint.bf16_check or {}).get("max_dex")
    return native_bf16(device) and deviation is not None and deviation <= BF16_SAFE_DEX


def bf16_deviation(checkpoint: Checkpoint, images: torch.Tensor, device="cpu") -> float:
    """The largest |bfloat16 − float32| of any output (physical units) on uint8 ``images``
    at TTA 1 (the copies of TTA only average the differences down)."""
    exact = Predictor(checkpoint, device, bf16=False).predict_images(images, 1)
    fast = Predictor(checkpoint, device, bf16=True).predict_images(images, 1)
    return float(np.abs(fast.mean - exact.mean).max())


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: a CUDA GPU, or a CPU with AVX512-BF16 or
    AMX. Elsewhere a CPU emulates bf16, slower than float32, so the predictor keeps float32."""
    if torch.device(device).type == "cuda":
        return True
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in _CPU_BF16_PROBES)


#: torch.cpu's probes for the instructions that make bf16 fast on a CPU.
_CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def check_images(images: list[np.ndarray], size: int) -> None:
    """Raise ``ValueError`` unless every image is a decoded (size, size, 3) uint8 array."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError(f"image {i} is not a uint8 array (decode it with decode_image)")
        if image.shape != (size, size, 3):
            raise ValueError(
                f"image {i} has shape {image.shape}, the model needs ({size}, {size}, 3): "
                "decode it with decode_image(data, predictor.input_size)"
            )
