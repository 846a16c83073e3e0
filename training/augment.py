"""The eight rotations and flips of the square (the dihedral group D4) as index operations.

Galaxies have no preferred orientation, so these are the training augmentation and the
test-time augmentation (TTA: the mean prediction over the transformed copies). Works on
any (..., H, W) tensor, on the CPU or the GPU.
"""

from __future__ import annotations

import torch

#: Transform k: rotate by 90° * (k % 4), then mirror left-right when k >= 4.
N_D4 = 8
#: Which transforms a TTA of n copies uses: identity; + mirror; the 4 rotations; all 8.
TTA_TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(N_D4))}


def d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of D4 applied to the last two dimensions of ``x``."""
    if not 0 <= k < N_D4:
        raise ValueError(f"D4 transform index must be 0..7, got {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch (N, C, H, W) under its own random D4 transform."""
    ks = torch.randint(0, N_D4, (x.shape[0],), generator=generator, device="cpu")
    out = torch.empty_like(x)
    for k in range(N_D4):
        idx = (ks == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = d4(x[idx], k)
    return out


def tta_views(x: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` TTA copies of a batch (N, C, H, W), stacked as (n * N, C, H, W)."""
    if n not in TTA_TRANSFORMS:
        raise ValueError(f"TTA must be 1, 2, 4 or 8 copies, got {n}")
    return torch.cat([d4(x, k) for k in TTA_TRANSFORMS[n]])
