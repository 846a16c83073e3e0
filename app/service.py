"""What the API does, behind thin routes: one ``Service`` per process.

It owns the model (loaded once; the mock-sky demo model when none is configured), the
inference engine that micro-batches requests, the database (migrated at start), and the
shared SkyServer client. A prediction by coordinates looks in the cache first, then needs
the cutout (cached too, so a repeated position never refetches SDSS), checks it is not
blank, runs the model, and upserts the result. Database calls are synchronous SQLAlchemy,
run in worker threads so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch
from anyio import to_thread
from sqlalchemy.orm import Session, sessionmaker

from galmet.app import cache, db
from galmet.app.core.config import Settings
from galmet.app.demo import DEMO_NOTICE, demo_checkpoint, is_demo
from galmet.app.images import CheckedImage, centre_has_source, check_image
from galmet.app.schemas import ModelOut, PredictionOut
from galmet.app.skyserver import SkyServerClient, SkyServerError, SkyServerTimeout, is_blank_cutout
from galmet.training.model import Checkpoint, Predictor, file_sha256
from galmet.training.predict import cutout_geometry
from galmet.training.preprocess import decode_image
from galmet.training.train import pick_device
from galmet.worker.engine import InferenceEngine, default_tta

if TYPE_CHECKING:
    from galmet.app.jobs import CeleryJobs, InProcessJobs

log = logging.getLogger("galmet.service")

#: Catalog output name -> (value field, sigma field) of a prediction.
FIELDS = {"oh_p50": ("oh_p50", "oh_sigma"), "lgm_tot_p50": ("log_mstar", "log_mstar_sigma")}


class ApiError(Exception):
    """A request that cannot be answered: HTTP status, one-line reason, flags."""

    def __init__(self, status: int, detail: str, flags: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.flags = status, detail, flags or []


def blank_cutout_error(ra: float, dec: float) -> ApiError:
    """The 422 for a position whose SDSS cutout is blank."""
    return ApiError(
        422,
        f"the SDSS cutout at RA {ra:.5f}, Dec {dec:.5f} is blank: "
        "the position is outside the SDSS imaging footprint",
        ["blank_cutout", "off_footprint"],
    )


@dataclass
class ModelInfo:
    path: Path
    checkpoint: Checkpoint
    version: str
    name: str
    demo: bool
    fetch_size: int
    fetch_scale: float
    trained_size: int


@dataclass
class Service:
    """The resources of a running service; ``start`` before use, ``aclose`` after."""

    settings: Settings
    model: ModelInfo | None = None
    engine: InferenceEngine | None = None
    sessions: sessionmaker[Session] | None = None
    skyserver: SkyServerClient | None = None
    tta: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    jobs: InProcessJobs | CeleryJobs | None = None  # runs batch-job chunks
    _inflight: dict[tuple, asyncio.Task] = field(default_factory=dict)

    async def start(self, worker: bool = False) -> None:
        """Connect and load. ``worker=True`` in a Celery worker: no migrations (the API, or
        compose's migrate step, applies them; workers would race) and no job executor."""
        s = self.settings
        if not worker:
            await to_thread.run_sync(db.upgrade, s.database_url)
        self.sessions = db.sessionmaker_for(db.make_engine(s.database_url))
        self.device = pick_device(s.device)
        path = s.model or await to_thread.run_sync(demo_checkpoint, s)
        ck = await to_thread.run_sync(Checkpoint.load, path)
        version = await to_thread.run_sync(file_sha256, path)
        fetch_size, fetch_scale = cutout_geometry(ck)
        trained = int(ck.config.get("image_size") or ck.input_size)
        self.model = ModelInfo(
            path=Path(path),
            checkpoint=ck,
            version=version,
            name="mock-sky demo" if is_demo(ck) else Path(path).stem,
            demo=is_demo(ck),
            fetch_size=fetch_size,
            fetch_scale=fetch_scale,
            trained_size=trained,
        )
        self.tta = default_tta(self.device, s.tta)
        self.engine = InferenceEngine(
            Predictor(ck, self.device), batch_size=s.batch_size, batch_wait_ms=s.batch_wait_ms
        )
        await self.engine.start()
        self.skyserver = SkyServerClient(
            s.skyserver_url,
            timeout=s.skyserver_timeout,
            retries=s.skyserver_retries,
            rate=s.skyserver_rate,
            concurrency=s.fetch_concurrency,
        )
        if not worker:
            from galmet.app.jobs import CeleryJobs, InProcessJobs

            self.jobs = CeleryJobs(self, s.broker_url) if s.broker_url else InProcessJobs(self)
            await self.jobs.start()
        log.info(
            "model %s (%s) on %s, TTA %d, database %s",
            self.model.name,
            version[:12],
            self.device,
            self.tta,
            db.safe_url(s.database_url),
        )

    async def aclose(self) -> None:
        if self.jobs is not None:
            await self.jobs.aclose()
        if self.engine is not None:
            await self.engine.aclose()
        if self.skyserver is not None:
            await self.skyserver.aclose()

    # ------------------------------------------------------------------ information
    def model_out(self) -> ModelOut:
        m = self._model()
        ck = m.checkpoint
        return ModelOut(
            name=m.name,
            version=m.version,
            checkpoint_sha256=m.version,
            architecture=ck.architecture,
            outputs=list(ck.outputs),
            input_size=ck.input_size,
            bands=ck.bands,
            pixel_scale=m.fetch_scale,
            training_data=ck.data,
            test_metrics=ck.metrics,
            demo=m.demo,
            notice=DEMO_NOTICE if m.demo else None,
            tta=self.tta,
            device=str(self.device),
        )

    async def readiness(self) -> dict[str, str]:
        checks = {"model": "ok" if self.engine is not None else "not loaded"}
        try:
            ok = await to_thread.run_sync(db.check, self._sessions().kw["bind"])
            checks["database"] = "ok" if ok else "no answer"
        except Exception as exc:  # any failure means "not ready", with its reason
            checks["database"] = f"error: {exc}".splitlines()[0][:200]
        checks["broker"] = await self.jobs.check() if self.jobs else "not used by a worker"
        return checks

    # ------------------------------------------------------------------ predictions
    async def predict_coordinates(self, ra: float, dec: float) -> PredictionOut:
        """Cached, or: cutout (cached or fetched) → blank check → model → cache."""
        m = self._model()
        key = (cache.sky_key(ra, dec), m.version, self.tta)
        # Identical requests arriving together share one computation.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._predict_coordinates(ra, dec))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _predict_coordinates(self, ra: float, dec: float) -> PredictionOut:
        m = self._model()
        row = await self.run_db(cache.find_sky, ra, dec, m.version, self.tta)
        if row is not None:
            return self._out(row, cached=True)
        jpeg = await self.cutout(ra, dec)
        pixels = decode_image(jpeg, m.checkpoint.input_size)
        flags = [] if centre_has_source(pixels) else ["no_source_at_centre"]
        return await self._predict_and_store(pixels, flags, kind="sky", ra=ra, dec=dec)

    async def predict_upload(self, data: bytes) -> PredictionOut:
        m = self._model()
        try:
            image: CheckedImage = await to_thread.run_sync(
                check_image, data, m.checkpoint.input_size, m.trained_size
            )
        except ValueError as exc:
            raise ApiError(getattr(exc, "status", 422), str(exc)) from None
        row = await self.run_db(cache.find_image, image.sha256, m.version, self.tta)
        if row is not None:
            return self._out(row, cached=True)
        if is_blank_cutout(image.pixels):
            raise ApiError(422, "the image is blank (near-black): nothing to measure", ["blank"])
        flags = list(image.flags)
        if not centre_has_source(image.pixels):
            flags.append("no_source_at_centre")
        return await self._predict_and_store(
            image.pixels, flags, kind="image", image_sha256=image.sha256
        )

    async def _predict_and_store(self, pixels, flags: list[str], **key) -> PredictionOut:
        """Run the model on one image and upsert the result under ``key`` (kind and
        position or image hash)."""
        result = (await self.predict_images([pixels], self.tta))[0]
        row = await self.run_db(
            cache.store_prediction,
            model_version=self._model().version,
            tta=self.tta,
            outputs=result["outputs"],
            sigma=result["sigma"],
            tta_spread=result["tta_spread"],
            flags=flags,
            **key,
        )
        return self._out(row, cached=False)

    async def predict_images(self, images: list, tta: int) -> list[dict]:
        """Prediction records for decoded images, through the micro-batching engine."""
        return await self._engine().predict(images, tta)

    async def cutout(self, ra: float, dec: float) -> bytes:
        """The model's SkyServer cutout at (ra, dec): from the cache, else fetched and kept.

        Blank (off-footprint) cutouts are kept too, then refused with a 422.
        """
        m = self._model()
        row = await self.run_db(cache.get_cutout, ra, dec, m.fetch_scale, m.fetch_size)
        if row is None:
            jpeg, blank = await self.fetch_cutout(ra, dec)
            row = await self.run_db(
                cache.store_cutout, ra, dec, m.fetch_scale, m.fetch_size, jpeg, blank
            )
        if row.blank:
            raise blank_cutout_error(ra, dec)
        return row.jpeg

    async def fetch_cutout(self, ra: float, dec: float) -> tuple[bytes, bool]:
        """The model's cutout from SkyServer (not the cache) and whether it is blank; SkyServer
        failures are ``ApiError`` 502 or 504."""
        m = self._model()
        try:
            jpeg = await self._skyserver().cutout(
                ra, dec, scale=m.fetch_scale, width=m.fetch_size, height=m.fetch_size
            )
        except SkyServerTimeout as exc:
            raise ApiError(504, f"SkyServer did not answer in time: {exc.reason}") from None
        except SkyServerError as exc:
            raise ApiError(502, f"SkyServer failed: {exc.reason}") from None
        return jpeg, await to_thread.run_sync(is_blank_cutout, jpeg)

    # ------------------------------------------------------------------ batch jobs
    async def create_job(
        self, stream: BinaryIO, filename: str | None, content_type: str | None
    ) -> dict:
        """Parse (streaming), write and queue a job; returns its status document."""
        from galmet.app import jobs
        from galmet.app.targets import TargetsError, parse_targets, target_format

        m, s = self._model(), self.settings

        def write(session: Session):
            source = target_format(stream, filename, content_type)
            rows = parse_targets(stream, filename, content_type, s.max_job_targets)
            return jobs.insert_job(
                session,
                rows,
                model_version=m.version,
                tta=self.tta,
                chunk_size=s.job_chunk_size,
                source=source,
                filename=filename,
            )

        try:
            job = await self.run_db(write)
        except TargetsError as exc:
            raise ApiError(exc.status, str(exc)) from None
        try:
            await self._jobs().submit([(job.id, c) for c in range(job.n_chunks)])
        except Exception as exc:
            await self.run_db(jobs.delete_job, job.id)
            raise ApiError(503, f"the job could not be queued: {exc}".splitlines()[0]) from None
        log.info(
            "job %s: %d targets in %d chunks",
            job.id,
            job.n_targets,
            job.n_chunks,
            extra={"job_id": job.id},
        )
        return await self.job_status(job.id)

    async def job_status(self, job_id: str) -> dict:
        from galmet.app.jobs import job_status

        status = await self.run_db(job_status, job_id)
        if status is None:
            raise ApiError(404, f"no job {job_id}")
        return status

    async def job_results(self, job_id: str) -> tuple[dict, list[dict]]:
        """The job's status and one result dict per input row."""
        from galmet.app.jobs import job_results

        status = await self.job_status(job_id)
        return status, await self.run_db(job_results, job_id)

    # ------------------------------------------------------------------ helpers
    def _jobs(self) -> InProcessJobs | CeleryJobs:
        if self.jobs is None:
            raise ApiError(503, "batch jobs are not running in this process")
        return self.jobs

    def _out(self, row, cached: bool) -> PredictionOut:
        m = self._model()
        values: dict = {}
        spread = {}
        for name, value in row.outputs.items():
            value_field, sigma_field = FIELDS.get(name, (name, f"{name}_sigma"))
            values[value_field] = value
            values[sigma_field] = row.sigma[name]
            spread[value_field] = row.tta_spread[name]
        oh, oh_sigma = values.get("oh_p50"), values.get("oh_sigma")
        return PredictionOut(
            oh_p50=oh,
            oh_sigma=oh_sigma,
            oh_p16=None if oh is None else oh - oh_sigma,
            oh_p84=None if oh is None else oh + oh_sigma,
            log_mstar=values.get("log_mstar"),
            log_mstar_sigma=values.get("log_mstar_sigma"),
            tta=row.tta,
            tta_spread=spread,
            model_version=m.version,
            model_name=m.name,
            demo=m.demo,
            notice=DEMO_NOTICE if m.demo else None,
            cached=cached,
            flags=list(row.flags),
            source="coordinates" if row.kind == "sky" else "image",
            ra=row.ra,
            dec=row.dec,
            image_sha256=row.image_sha256,
        )

    async def run_db(self, fn, *args, **kwargs):
        """``fn(session, *args, **kwargs)`` in a worker thread, with a session of its own."""
        sessions = self._sessions()

        def call():
            with sessions() as session:
                return fn(session, *args, **kwargs)

        return await to_thread.run_sync(call)

    def _model(self) -> ModelInfo:
        if self.model is None:
            raise ApiError(503, "the model is not loaded yet")
        return self.model

    def _engine(self) -> InferenceEngine:
        if self.engine is None:
            raise ApiError(503, "the inference engine is not running")
        return self.engine

    def _sessions(self) -> sessionmaker[Session]:
        if self.sessions is None:
            raise ApiError(503, "the database is not connected")
        return self.sessions

    def _skyserver(self) -> SkyServerClient:
        if self.skyserver is None:
            raise ApiError(503, "the SkyServer client is not running")
        return self.skyserver
