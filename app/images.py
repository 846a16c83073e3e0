"""Uploaded images: checked, decoded once by the shared preprocessing, and flagged.

The size cap is enforced while reading (``read_capped``), Pillow's decompression-bomb guard
is on (``Image.MAX_IMAGE_PIXELS``), only JPEG and PNG are accepted, and truncated files are
refused. Grayscale and RGBA images are converted to RGB and flagged; images of another size
than the model was trained on are resized and flagged.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from galmet.training.preprocess import decode_image

# A 4096 x 4096 cutout is far larger than any SDSS cutout anyone should upload; beyond it,
# Pillow raises DecompressionBombError instead of allocating gigabytes.
Image.MAX_IMAGE_PIXELS = 4096 * 4096
FORMATS = {"JPEG", "PNG"}


class BadImage(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class CheckedImage:
    """An upload ready for the model: pixels at the model's input size, and what was done."""

    pixels: np.ndarray  # RGB uint8 (size, size, 3)
    sha256: str
    flags: list[str] = field(default_factory=list)


async def read_capped(upload, limit: int) -> bytes:
    """Read an upload, refusing (413) as soon as it exceeds ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := await upload.read(1 << 16):
        total += len(chunk)
        if total > limit:
            raise BadImage(f"upload larger than the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def check_image(data: bytes, input_size: int, trained_size: int) -> CheckedImage:
    """Validate and decode an upload; see the module docstring for the rules."""
    if not data:
        raise BadImage("the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            kind, mode, size = im.format, im.mode, im.size
            if kind not in FORMATS:
                raise BadImage(f"only JPEG and PNG images are accepted, not {kind}", status=415)
            im.load()
    except Image.DecompressionBombError:
        raise BadImage("image has too many pixels (decompression bomb guard)", 413) from None
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated or corrupt image" if "truncated" in str(exc) else "not a readable image"
        raise BadImage(f"{reason}: {exc}".split("\n")[0][:200]) from None
    flags = []
    if mode in ("1", "L", "I", "I;16", "F"):
        flags.append("grayscale_converted")
    elif mode != "RGB":  # RGBA, palette, CMYK ...
        flags.append(f"converted_from_{mode.lower()}")
    if size[0] != size[1]:
        flags.append("not_square")
    if size != (trained_size, trained_size):
        flags.append("resized")
    pixels = decode_image(data, input_size)
    return CheckedImage(pixels, hashlib.sha256(data).hexdigest(), flags)


def centre_has_source(pixels: np.ndarray) -> bool:
    """Whether the centre is clearly brighter than the sky around it (a galaxy is there)."""
    grey = pixels.max(axis=-1).astype(float)
    h, w = grey.shape
    c = grey[h // 2 - h // 16 : h // 2 + h // 16 + 1, w // 2 - w // 16 : w // 2 + w // 16 + 1]
    sky = np.median(grey)
    mad = np.median(np.abs(grey - sky)) + 1.0
    return bool(np.mean(c) > sky + 5 * mad)
