"""What an input image looks like before the network sees it: a few pixel statistics for the
out-of-distribution score.

The network's pooled features (``galmet.predictor.ood_scores``) tell stars, noise and a wrong
pixel scale from galaxies once the network has learnt enough, but a network that predicts
metallicity need not care about an image's colours at all, so a colour-swapped image can look
ordinary to it. These statistics look at the pixels themselves (back in the JPEG's 0-1 scale,
where SDSS's asinh colour stretch keeps each band's share of the flux): within circular
apertures about the centre (1/32, 1/16, 1/8 and 1/4 of the frame's side in radius), each band's
share of the light above the outskirts' level (the colour: two numbers per aperture), how
much of the light within 1/4 is within each smaller one (the concentration: point sources and
too-small galaxies), the log of that light, and each band's mean and spread in the outskirts
(the sky). Galaxies of the training set occupy a narrow region of that space, and the
Mahalanobis distance from it (the same ``ood_scores``) is large for swapped colours, empty
frames and point sources. Every aperture is a disc about the frame's centre, so the
statistics are the same for every D4 copy of an image and are computed once per image.
"""

from __future__ import annotations

import torch

#: Aperture radii as fractions of the frame's side, and where the outskirts begin.
APERTURES = (1 / 32, 1 / 16, 1 / 8, 1 / 4)
OUTSKIRTS = 0.4
#: Light (mean 0-1 pixel value above the sky) below which a share or a ratio is not
#: measured but bounded: an empty frame's shares are noise over noise.
_FLOOR = 1e-3
_BOUND = 10.0


def _radius(size: int, device: torch.device) -> torch.Tensor:
    """Each pixel's distance from the frame's centre, as a fraction of the side."""
    axis = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    return torch.hypot(axis[:, None], axis[None, :]) / size


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a / b.clamp_min(_FLOOR)).clamp(-_BOUND, _BOUND)


def image_statistics(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(N, 18) statistics of normalised square 3-band inputs (N, 3, H, H), given the
    ``mean`` and ``std`` they were normalised with (``galmet.preprocess.normalise``)."""
    n, c, h, w = x.shape
    if h != w or c != 3:
        raise ValueError(f"image statistics need square 3-band frames, got {c} x {h} x {w}")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1)
    pixels = x.float().reshape(n, c, h * w) * s + m  # back to the JPEG's 0-1 values
    r = _radius(h, x.device).reshape(-1)
    sky = pixels[:, :, r > OUTSKIRTS]
    level = sky.mean(dim=2)
    light = []  # (N, 3) mean light above the sky per band, per aperture
    for radius in APERTURES:
        inside = r <= max(radius, 1.0 / h)  # at least the central pixels, however small
        light.append(pixels[:, :, inside].mean(dim=2) - level)
    parts = []
    for per_band in light:
        total = per_band.sum(dim=1)
        parts.append(_ratio(per_band[:, [0, 2]], total[:, None]))  # R and B shares
    outer = light[-1].sum(dim=1)
    for inner in light[:-1]:
        parts.append(_ratio(inner.sum(dim=1), outer)[:, None])
    parts.append(outer.clamp_min(_FLOOR).log()[:, None])
    parts += [level, sky.std(dim=2)]
    return torch.cat(parts, dim=1)
