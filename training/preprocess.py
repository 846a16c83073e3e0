"""The one image-preprocessing path, shared by training, evaluation and serving.

An image (JPEG/PNG bytes, or a uint8 array) becomes a uint8 array of shape (H, W, 3) with
``decode_image``; a batch of those becomes the network's float input with ``normalise``.
Both are light (Pillow, NumPy, torch) so the service imports them without training code.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# ImageNet statistics: what torchvision's pretrained ResNet-34 expects; used for
# from-scratch models too, so that every checkpoint normalises the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BANDS = ("gri", "r")


def decode_image(data: bytes | np.ndarray, size: int | None = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3) from image bytes or an array; resized to ``size`` if given.

    Grayscale and RGBA inputs are converted to RGB. Raises ``ValueError`` for bytes that
    are not a complete image.
    """
    if isinstance(data, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(data))
    else:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ValueError(f"not a readable image: {exc}") from exc
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalise(
    images: torch.Tensor,
    bands: str = "gri",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """Network input from a uint8 batch (N, 3, H, W) or (N, H, W, 3): float, normalised.

    ``bands="r"`` feeds the r channel (SDSS JPEGs map i, r, g to R, G, B, so r is green)
    to all three inputs, for the r-band-only variant of the paper.
    """
    if bands not in BANDS:
        raise ValueError(f"bands must be one of {BANDS}, got {bands!r}")
    if images.ndim != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    x = images.float().div_(255.0)
    if bands == "r":
        x = x[:, 1:2].expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
