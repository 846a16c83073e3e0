"""The eight rotations and flips of the square (the dihedral group D4) as index operations.

Galaxies have no preferred orientation, so these are the training augmentation and the
test-time augmentation (TTA: the mean prediction over the transformed copies). Works on
any (..., H, W) tensor, on the CPU or the GPU.
"""

from __future__ import annotations

import functools

import torch

#: Transform k: rotate by 90° * (k % 4), then mirror left-right when k >= 4.
N_D4 = 8
#: Which transforms a TTA of n copies uses: identity; + mirror; the 4 rotations; all 8.
TTA_TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(N_D4))}
#: The test-time augmentation levels a model can be asked for (copies averaged).
TTA_LEVELS = tuple(TTA_TRANSFORMS)
#: The levels in words, for messages: "1, 2, 4 or 8".
TTA_LEVELS_TEXT = ", ".join(map(str, TTA_LEVELS[:-1])) + f" or {TTA_LEVELS[-1]}"


def check_tta(n: int) -> int:
    """``n`` if it is a TTA level (1, 2, 4 or 8), else ``ValueError``."""
    if n not in TTA_TRANSFORMS:
        raise ValueError(f"TTA must be {TTA_LEVELS_TEXT} copies, got {n}")
    return n


def d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of D4 applied to the last two dimensions of ``x``."""
    if not 0 <= k < N_D4:
        raise ValueError(f"D4 transform index must be 0..7, got {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


@functools.lru_cache(maxsize=16)
def d4_source_index(size: int, device: torch.device) -> torch.Tensor:
    """(8, size * size) int64: for transform k, the flat source pixel of each output pixel.

    Applying ``d4`` to a grid of pixel numbers gives exactly that, so the table cannot
    disagree with ``d4``. Cached per size and device: it is built once, not per batch.
    """
    # A normal tensor even when first asked for under inference_mode, so that training
    # (outside it) may use the cached table too.
    with torch.inference_mode(False):
        grid = torch.arange(size * size).view(size, size)
        return torch.stack([d4(grid, k).reshape(-1) for k in range(N_D4)]).to(device)


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch (N, C, S, S) under its own random D4 transform.

    One gather on ``x``'s device, with the transforms drawn on the generator's device: no
    per-transform loop and no copy back to the host, so a CUDA batch never waits on the CPU.
    """
    n, size = x.shape[0], x.shape[-1]
    if x.shape[-2] != size:
        raise ValueError(f"D4 needs square images, got {tuple(x.shape[-2:])}")
    draw_on = generator.device if generator is not None else x.device
    ks = torch.randint(0, N_D4, (n,), generator=generator, device=draw_on)
    src = d4_source_index(size, x.device)[ks.to(x.device, non_blocking=True)]  # (N, S*S)
    flat = x.reshape(*x.shape[:-2], size * size)
    index = src.view(n, *([1] * (x.ndim - 3)), size * size).expand_as(flat)
    return flat.gather(-1, index).view_as(x)


def tta_views(x: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` TTA copies of a batch (N, C, H, W), stacked as (n * N, C, H, W)."""
    check_tta(n)
    return torch.cat([d4(x, k) for k in TTA_TRANSFORMS[n]])
