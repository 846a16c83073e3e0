"""The model a service process runs: loaded once at start, described at ``/models``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from anyio import to_thread

from galmet.app.core.config import Settings
from galmet.app.demo import DEMO_NOTICE, demo_checkpoint, is_demo
from galmet.app.schemas import ModelOut
from galmet.device import pick_device
from galmet.model import Checkpoint, file_sha256
from galmet.predictor import Predictor, default_tta, fetch_geometry
from galmet.scale_mode import recorded_scale_mode


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint loaded for serving, with what the service needs to know about it."""

    path: Path
    checkpoint: Checkpoint
    version: str  # SHA-256 of the checkpoint file: the model part of every cache key
    name: str
    demo: bool
    fetch_size: int  # the SkyServer cutout to fetch: pixels …
    fetch_scale: float | None  # … and arcsec per pixel; None: each galaxy's (petro)
    trained_size: int  # pixels of the training images (uploads of another size are flagged)
    device: torch.device
    tta: int  # TTA copies served

    @property
    def input_size(self) -> int:
        return self.checkpoint.input_size

    @property
    def notice(self) -> str | None:
        return DEMO_NOTICE if self.demo else None

    @property
    def scale_mode(self) -> str:
        """The cutout recipe the model was trained on: fixed, or petro (galmet.scale_mode)."""
        return recorded_scale_mode(self.checkpoint.config)

    def geometry(self, petro_r90: float | None = None) -> tuple[int, float]:
        """(pixels, arcsec/px) of the cutout to fetch for a galaxy of ``petro_r90`` arcsec; a
        petro model without it raises ``GalmetError`` (a fixed one ignores it)."""
        if self.fetch_scale is not None:
            return self.fetch_size, self.fetch_scale
        return fetch_geometry(self.checkpoint, petro_r90=petro_r90)

    def predictor(self) -> Predictor:
        """A predictor on this model's device (each process holds one)."""
        return Predictor(self.checkpoint, self.device)

    def describe(self) -> ModelOut:
        """The ``/models`` document."""
        ck = self.checkpoint
        return ModelOut(
            name=self.name,
            version=self.version,
            checkpoint_sha256=self.version,
            architecture=ck.architecture,
            outputs=list(ck.outputs),
            input_size=ck.input_size,
            bands=ck.bands,
            pixel_scale=self.fetch_scale,
            training_data=ck.data,
            test_metrics=ck.metrics,
            demo=self.demo,
            notice=self.notice,
            tta=self.tta,
            served_test_metrics=(ck.metrics.get("results") or {}).get(f"tta{self.tta}"),
            device=str(self.device),
        )


async def load_model(settings: Settings) -> LoadedModel:
    """The configured checkpoint (the mock-sky demo model when none is), loaded."""
    device = pick_device(settings.device)
    path = Path(settings.model or await to_thread.run_sync(demo_checkpoint, settings))
    ck = await to_thread.run_sync(Checkpoint.load, path)
    version = await to_thread.run_sync(file_sha256, path)
    petro = recorded_scale_mode(ck.config) == "petro"
    # A petro model: the size only (any radius gives it); the scale is each galaxy's.
    fetch_size, fetch_scale = fetch_geometry(ck, petro_r90=1.0) if petro else fetch_geometry(ck)
    demo = is_demo(ck)
    return LoadedModel(
        path=path,
        checkpoint=ck,
        version=version,
        name="mock-sky demo" if demo else path.stem,
        demo=demo,
        fetch_size=fetch_size,
        fetch_scale=None if petro else fetch_scale,
        trained_size=int(ck.config.get("image_size") or ck.input_size),
        device=device,
        tta=default_tta(device, settings.tta),
    )
