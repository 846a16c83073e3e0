"""Which device a model runs on: ``auto``, ``cpu`` or ``cuda``.

Two hazards of CUDA hosts are handled here:

- **Fork poisoning.** A process that has asked ``torch.cuda`` anything (``is_available``
  included) cannot hand a working CUDA to the children it forks: they fail with "Cannot
  re-initialize CUDA in forked subprocess" or, under ``auto``, fall back to the CPU. A process
  that forks workers afterwards (``galmet worker``: Celery's prefork pool) checks the device
  with ``check_device_elsewhere``, in a spawned process, and never touches CUDA itself.
- **A silent CPU fallback.** ``auto`` on a machine with NVIDIA devices but no CUDA for torch
  (typically a driver older than the one torch's CUDA build needs) says so in one warning.
"""

from __future__ import annotations

import glob
import logging
import multiprocessing

import torch

from galmet.errors import GalmetError

DEVICES = ("auto", "cpu", "cuda")
log = logging.getLogger("galmet.device")


def nvidia_devices() -> list[str]:
    """The NVIDIA GPU device files of this machine (``/dev/nvidia0`` …), without asking CUDA."""
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; asking for CUDA without it is an error.

    Touches ``torch.cuda``: a process that will fork workers must use
    ``check_device_elsewhere`` instead.
    """
    if name not in DEVICES:
        raise GalmetError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise GalmetError(f"--device cuda, but no CUDA GPU is available here{_why()}")
    if nvidia_devices():
        log.warning("running on the CPU: %s", _why().removeprefix(": "))
    return torch.device("cpu")


def _why() -> str:
    """Why CUDA is missing, where the machine has NVIDIA devices (else nothing)."""
    found = nvidia_devices()
    if not found:
        return ""
    return (
        f": this machine has NVIDIA devices ({', '.join(found[:4])}) but torch "
        f"{torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'}) cannot "
        "use them; update the NVIDIA driver to one that supports that CUDA version, or install "
        "a torch build for the installed driver (or set the device to cpu to silence this)"
    )


def _device_type(name: str) -> str:
    return pick_device(name).type


def check_device_elsewhere(name: str) -> str:
    """``pick_device(name).type`` worked out in a freshly spawned process, so that this
    process never initialises CUDA (see the module: it may fork workers later). Raises the
    same ``GalmetError`` as ``pick_device``."""
    if name == "cpu":
        return "cpu"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_device_type, (name,))
