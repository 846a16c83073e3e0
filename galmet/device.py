"""Which device a model runs on: ``auto``, ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from galmet.errors import GalmetError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if name not in DEVICES:
        raise GalmetError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GalmetError("--device cuda, but no CUDA GPU is available here")
    return torch.device(name)
