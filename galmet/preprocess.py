"""The one image-preprocessing path, shared by training, evaluation and serving.

An image (JPEG/PNG bytes, or a uint8 array) becomes a uint8 array of shape (H, W, 3) with
``galmet.images.decode_image``; a batch of those becomes the network's float input with
``normalise``.
``decode_batch`` does the first step for a whole batch of encoded images, on the GPU when
the model runs there. All are light (Pillow, NumPy, torch; torchvision only on CUDA) so the
service imports them without training code.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from galmet.images import decode_image

# ImageNet statistics: what torchvision's pretrained ResNet-34 expects; used for
# from-scratch models too, so that every checkpoint normalises the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BANDS = ("gri", "r")
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"  # nvJPEG: a JFIF/EXIF start only


def gpu_decodable(data: bytes) -> bool:
    """Whether ``decode_batch`` may hand these bytes to nvJPEG on a GPU.

    Only complete RGB or grayscale JPEGs within Pillow's decompression-bomb limit: nvJPEG
    has no such limit and reports truncation differently, so everything else (PNG, CMYK,
    truncated or oversized files, garbage) takes ``decode_image``, which keeps the
    one-line errors and limits of the CPU path. Reads only the header.
    """
    if not (data.startswith(JPEG_START) and data.rstrip(b"\x00").endswith(JPEG_END)):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            ok = im.format == "JPEG" and im.mode in ("RGB", "L")
    except Exception:  # whatever Pillow cannot parse goes to decode_image, which says why
        return False
    return ok and width * height <= (Image.MAX_IMAGE_PIXELS or float("inf"))


def decode_batch(
    data: Sequence[bytes], size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A uint8 batch (N, size, size, 3) on ``device`` from encoded images (JPEG/PNG).

    On the CPU this is ``decode_image`` per image, stacked: exactly the training pixels. On
    CUDA the JPEGs that ``gpu_decodable`` accepts are decoded together by nvJPEG and resized
    on the GPU (bilinear, antialiased as Pillow's is); nvJPEG's IDCT may differ from
    libjpeg's by a grey level or so. The rest are decoded on the CPU. Raises ``ValueError``
    for an image that does not decode, as ``decode_image`` does.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _decode_batch_cuda(data, size, device)
    return torch.from_numpy(np.stack([decode_image(d, size) for d in data]))


def _decode_batch_cuda(data: Sequence[bytes], size: int, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    if not data:
        raise ValueError("no images to decode")
    parts: list[torch.Tensor | None] = [None] * len(data)  # (3, size, size) each, on device
    on_gpu = [i for i, d in enumerate(data) if gpu_decodable(d)]
    decoded: list[torch.Tensor] = []
    if on_gpu:
        encoded = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in on_gpu]
        # nvJPEG decodes on a stream of its own into memory allocated on the caller's: finish
        # the caller's queued work first (torchvision's batched decode raced on H100; free
        # when the stream is idle).
        torch.cuda.current_stream(device).synchronize()
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            # One bad JPEG fails nvJPEG's whole batch: the CPU decodes (or rejects) them all.
            on_gpu, decoded = [], []
    # Resize images of one shape together (cutouts usually all have the same shape).
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, image in enumerate(decoded):
        by_shape.setdefault(tuple(image.shape), []).append(j)
    for shape, members in by_shape.items():
        batch = torch.stack([decoded[j] for j in members])
        if shape[1:] != (size, size):
            batch = resize(
                batch, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        for j, image in zip(members, batch, strict=True):
            parts[on_gpu[j]] = image
    on_cpu = [i for i, part in enumerate(parts) if part is None]
    if on_cpu:
        arrays = np.stack([decode_image(data[i], size) for i in on_cpu])
        host = torch.from_numpy(arrays).permute(0, 3, 1, 2).pin_memory()
        for i, image in zip(on_cpu, host.to(device, non_blocking=True), strict=True):
            parts[i] = image
    return torch.stack(parts).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=32)
def _stats(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Made once per device: torch.tensor(..., device="cuda") copies from pageable host
    # memory and waits for the GPU's queued work, which per batch would stall the pipeline.
    # A normal tensor even when first made under inference_mode, so training can use it too.
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device).view(1, len(values), 1, 1)


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
    m = _stats(tuple(float(v) for v in mean), x.device, x.dtype)
    s = _stats(tuple(float(v) for v in std), x.device, x.dtype)
    return (x - m) / s
