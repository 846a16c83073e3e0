"""Cutout recipes: one fixed pixel scale, or the paper's scale from each galaxy's size.

``fixed``: every cutout at one pixel scale (0.296″/px by default), so a galaxy's size in
pixels follows its size on the sky. ``petro``: the paper's public download script's recipe,
``scale = 2 * petroR90_r / 0.396 / 128`` arcsec/px for 128 px (written so: the frame spans
2·R90/0.396 arcsec, about 5 × R90, whatever the size), so every galaxy fills about the same
fraction of the frame. A model records its recipe in its checkpoint's training config
(``config["scale_mode"]``; checkpoints without it are ``fixed``), and a petro-scaled model
needs the galaxy's ``petroR90_r`` to fetch the cutout it was trained on.
"""

from __future__ import annotations

import math

from galmet.errors import GalmetError

SCALE_MODES = ("fixed", "petro")
#: The paper's script divides the arcsec radius by SDSS's 0.396″ pixel: kept as written.
SDSS_PIXEL = 0.396


def check_scale_mode(mode: str) -> str:
    """``mode`` if it is a known recipe, else a one-line error."""
    if mode not in SCALE_MODES:
        raise GalmetError(f"--scale-mode must be one of {', '.join(SCALE_MODES)}, not {mode!r}")
    return mode


def petro_scale(petro_r90: float | None, size: int) -> float:
    """Arcsec per pixel of a ``size``-pixel petro cutout of a galaxy of ``petroR90_r`` arcsec:
    ``2 * petroR90_r / 0.396 / size`` (the paper's recipe at 128 px, the same field at other
    sizes)."""
    if petro_r90 is None or not math.isfinite(petro_r90) or not petro_r90 > 0:
        raise GalmetError(f"petroR90_r must be a positive number of arcsec, not {petro_r90!r}")
    return 2.0 * float(petro_r90) / SDSS_PIXEL / size


def recorded_scale_mode(config: dict | None) -> str:
    """The recipe a checkpoint's training config records (``fixed`` when it records none)."""
    return check_scale_mode((config or {}).get("scale_mode") or "fixed")
