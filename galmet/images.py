"""Images in: decoded once, checked, and described by flags.

``decode_image`` is the first step of the one preprocessing path (training, evaluation and
serving): encoded bytes, or an already decoded array, become an RGB uint8 array (H, W, 3),
resized (bilinear) to the model's input when asked. Every other function here works on what
it returns, so an image is decoded once on every path:

- ``decode_jpeg`` is the strict check of a fetched cutout (a complete JPEG of the expected
  size); SkyServer's client keeps the pixels it decoded.
- ``check_upload`` validates an uploaded file (the API's and ``galmet predict``'s one upload
  rule), decodes it once and says what was done to it (flags).
- ``is_blank`` and ``centre_has_source`` judge decoded pixels.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from galmet.text import one_line

# A 4096 x 4096 cutout is far larger than any SDSS cutout anyone should upload; beyond it,
# Pillow raises DecompressionBombError instead of allocating gigabytes. (Pillow's own limit
# only warns below twice its ~89 Mpx default.)
Image.MAX_IMAGE_PIXELS = 4096 * 4096
#: Upload formats accepted.
FORMATS = ("JPEG", "PNG")
#: Image modes that are one grey channel (converted to RGB and flagged).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"

#: Blank-cutout test: blank when the 99.9th percentile of the brightest channel (0-255) is
#: below 10, i.e. fewer than 0.1 % of the pixels (16 of 128 x 128) reach 10. Off-footprint
#: getjpeg answers are black (0 after JPEG coding); on the mock sky, empty in-footprint sky
#: already gives 34-35 from noise alone and the faintest, lowest-surface-brightness sample
#: galaxies 78 or more. A percentile rather than the maximum lets a few stray bright pixels
#: pass; a PSF-sized blob of peak 40 on pure black still counts as data.
BLANK_LEVEL = 10
BLANK_PERCENTILE = 99.9


def _to_rgb(image: Image.Image, size: int | None) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _open(data: bytes) -> Image.Image:
    """The fully decoded image; ``ValueError`` (one line) for anything that is not one."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; galmet refuses (below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise Image.DecompressionBombError
        image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge("image has too many pixels (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "cannot identify image file" in text:
            raise ValueError("not an image (no JPEG or PNG data)") from None
        reason = "truncated or corrupt image" if "truncat" in text else "not a readable image"
        raise ValueError(f"{reason}: {one_line(text, 120)}") from None
    return image


def decode_image(data: bytes | np.ndarray, size: int | None = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3) from image bytes or an array; resized to ``size`` if given.

    Grayscale and RGBA inputs are converted to RGB. Raises ``ValueError`` for bytes that
    are not a complete image.
    """
    if isinstance(data, np.ndarray):
        rgb = data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3
        if rgb and (size is None or data.shape[:2] == (size, size)):
            return data
        return _to_rgb(Image.fromarray(np.ascontiguousarray(data)), size)
    return _to_rgb(_open(bytes(data)), size)


def decode_jpeg(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Fully decode a JPEG into an RGB uint8 array (height, width, 3).

    Raises ``ValueError`` for bytes that are not a complete JPEG (a truncated body
    included) or, when ``size`` (width, height) is given, one of another size.
    """
    # Pillow fails on a cut-short file too, unless something in the process has set
    # ImageFile.LOAD_TRUNCATED_IMAGES; the end-of-image marker check does not depend on that.
    if not data.startswith(JPEG_START):
        raise ValueError("not a JPEG")
    if not data.rstrip(b"\x00\r\n ").endswith(JPEG_END):
        raise ValueError("truncated JPEG")
    image = _open(data)
    if image.format != "JPEG":
        raise ValueError("not a JPEG")
    if size is not None and image.size != tuple(size):
        raise ValueError(f"JPEG is {image.size[0]}x{image.size[1]}, not {size[0]}x{size[1]}")
    return _to_rgb(image, None)


def is_valid_jpeg(data: bytes, size: tuple[int, int] | None = None) -> bool:
    """Whether ``data`` is a complete, decodable JPEG (of ``size``, when given)."""
    try:
        decode_jpeg(data, size)
    except ValueError:
        return False
    return True


def is_blank(image: bytes | np.ndarray) -> bool:
    """Whether a cutout is SkyServer's empty (near-black) off-footprint image.

    True when the ``BLANK_PERCENTILE`` of the brightest channel stays below ``BLANK_LEVEL``
    (see there for the evidence): sky noise alone lifts it well above, galaxy or not.
    """
    pixels = decode_image(image) if isinstance(image, bytes | bytearray) else np.asarray(image)
    if pixels.ndim == 3:
        pixels = pixels.max(axis=-1)
    return bool(np.percentile(pixels, BLANK_PERCENTILE) < BLANK_LEVEL)


def centre_has_source(pixels: np.ndarray) -> bool:
    """Whether the centre is clearly brighter than the sky around it (a galaxy is there)."""
    grey = pixels.max(axis=-1).astype(float)
    h, w = grey.shape
    c = grey[h // 2 - h // 16 : h // 2 + h // 16 + 1, w // 2 - w // 16 : w // 2 + w // 16 + 1]
    sky = np.median(grey)
    mad = np.median(np.abs(grey - sky)) + 1.0
    return bool(np.mean(c) > sky + 5 * mad)


# ---------------------------------------------------------------------------- uploads
class BadImage(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class ImageTooLarge(BadImage):
    """More pixels than ``Image.MAX_IMAGE_PIXELS`` (HTTP 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=413)


@dataclass
class CheckedImage:
    """An upload ready for the model: pixels at the model's input size, and what was done."""

    pixels: np.ndarray  # RGB uint8 (size, size, 3)
    sha256: str
    flags: list[str] = field(default_factory=list)
    blank: bool = False  # near-black: nothing to measure


def check_upload(data: bytes, input_size: int, trained_size: int) -> CheckedImage:
    """Validate and decode an uploaded image (once), for the API and ``galmet predict``.

    Only complete JPEG and PNG files are accepted (``BadImage``: 415 for another format,
    413 for a decompression bomb, 422 for empty, truncated or unreadable files). Grayscale
    and other modes are converted to RGB and flagged; an image that is not square, or not
    the size the model was trained on, is resized to the model's input and flagged.
    """
    if not data:
        raise BadImage("the file is empty")
    try:
        image = _open(data)
    except BadImage:
        raise
    except ValueError as exc:
        raise BadImage(str(exc)) from None
    if image.format not in FORMATS:
        raise BadImage(f"only JPEG and PNG images are accepted, not {image.format}", 415)
    mode, size = image.mode, image.size
    flags = []
    if mode in GREY_MODES:
        flags.append("grayscale_converted")
    elif mode != "RGB":  # RGBA, palette, CMYK ...
        flags.append(f"converted_from_{mode.lower()}")
    if size[0] != size[1]:
        flags.append("not_square")
    if size != (trained_size, trained_size):
        flags.append("resized")
    full = _to_rgb(image, None)
    pixels = decode_image(full, input_size)
    return CheckedImage(pixels, hashlib.sha256(data).hexdigest(), flags, blank=is_blank(full))
