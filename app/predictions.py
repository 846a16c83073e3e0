"""Single predictions: by sky position or uploaded image, through the caches.

A prediction by position first finds the SDSS object there (``galmet.app.identify``) and
centres on it; then it looks in the result cache; on a miss it needs the cutout (from the
cutout cache, else fetched from SkyServer and kept, so a repeated position never asks SDSS
again), refuses a blank one, runs the model through the micro-batching engine and upserts
the result. Where there is nothing to measure (no source at the centre of the cutout and no
SDSS object within the match radius) the answer is a 422 "no galaxy at this position".

A model trained on petro-scaled cutouts (``galmet.scale_mode``) fetches each at the scale
from the identified object's ``petroR90_r`` (the cutout cache keys on that scale); where
no object with one is identified, the answer is a 422 saying so. Uploads are taken as they
are, flagged ``petro_scale_assumed``.

An upload is checked and decoded once (``galmet.images.check_upload``)
and cached by its SHA-256. Every image is decoded once on each path: a fetched cutout by the
SkyServer client, a cached one here, an upload by the check.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import numpy as np
from anyio import to_thread

from galmet.app import cache
from galmet.app.core.config import Settings
from galmet.app.db import Database
from galmet.app.errors import ApiError, blank_cutout_error, no_galaxy_error, skyserver_error
from galmet.app.hot import HotAnswers
from galmet.app.identify import Identifier, Located
from galmet.app.model_info import LoadedModel
from galmet.app.schemas import ObjectOut, PredictionOut
from galmet.engine import InferenceEngine
from galmet.errors import GalmetError
from galmet.images import BadImage, centre_has_source, check_upload, decode_image
from galmet.record import public_fields
from galmet.skyserver import SkyServerClient, SkyServerError

# Uploads up to this size are hashed on the event loop (about 0.1 ms); larger ones in a thread.
INLINE_HASH_BYTES = 256 * 1024


@dataclass
class FetchedCutout:
    """A cutout for the model: its cache row's JPEG, pixels decoded once, and blankness."""

    jpeg: bytes
    pixels: np.ndarray | None  # full size; None for a blank one (never decoded further)
    blank: bool


@dataclass
class Predictions:
    """Predictions of one process: the model's engine, the caches and SkyServer."""

    settings: Settings
    db: Database
    model: LoadedModel
    engine: InferenceEngine
    skyserver: SkyServerClient
    identifier: Identifier
    _inflight: dict[tuple, asyncio.Task] = field(default_factory=dict)
    hot: HotAnswers = field(init=False)

    def __post_init__(self) -> None:
        self.hot = HotAnswers(self.settings.hot_answers)

    # ------------------------------------------------------------------ hot answers
    def hot_coordinates(self, ra: float, dec: float) -> bytes | None:
        """The encoded cached answer for exactly (ra, dec) when it is kept in memory."""
        return self.hot.get(sky_answer_key(ra, dec, self.model.version, self.model.tta))

    def hot_upload(self, data: bytes) -> bytes | None:
        """The encoded cached answer for this uploaded file when it is kept in memory."""
        if len(data) > INLINE_HASH_BYTES:
            return None  # hashed in a thread by predict_upload, not on the event loop
        sha256 = hashlib.sha256(data).hexdigest()
        return self.hot.get(("img", sha256, self.model.version, self.model.tta))

    # ------------------------------------------------------------------ by position
    async def predict_coordinates(self, ra: float, dec: float) -> PredictionOut:
        """Cached, or: cutout (cached or fetched) → blank check → model → cache."""
        # Identical requests arriving together share one computation; the exact position is
        # the key, so each answer echoes the position its own request asked for.
        key = (ra, dec, self.model.version, self.model.tta)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._predict_coordinates(ra, dec))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _predict_coordinates(self, ra: float, dec: float) -> PredictionOut:
        m = self.model
        located, row = await self.db.run(self._cached_answer, ra, dec)
        if located is None:  # never identified: ask SkyServer, then look again
            (located,) = await self.identifier.locate([(ra, dec)])
            row = await self.db.run(cache.find_sky, *located.centre, m.version, m.tta)
        cra, cdec = located.centre
        if row is None:
            cutout = await self.cutout(cra, cdec, *self.geometry(located))
            if cutout.blank:
                raise blank_cutout_error(cra, cdec)
            pixels = decode_image(cutout.pixels, m.input_size)
            flags = [] if centre_has_source(pixels) else ["no_source_at_centre"]
            check_something_there(flags, located)
            row = await self._predict_and_store(pixels, flags, ra=cra, dec=cdec)
            return self.output(row, cached=False, located=located)
        check_something_there(row.flags, located)
        answer = self.output(row, cached=True, located=located)
        if located.status != "unknown":  # a failed object look-up is asked again next time
            self.hot.put(sky_answer_key(ra, dec, m.version, m.tta), encode(answer))
        return answer

    def _cached_answer(self, session, ra: float, dec: float):
        """(located, cached prediction row) from the database in one session, so a cached
        answer costs one thread hop; (None, None) when the position was never identified."""
        located = self.identifier.known(session, ra, dec)
        if located is None:
            return None, None
        m = self.model
        return located, cache.find_sky(session, *located.centre, m.version, m.tta)

    def geometry(self, located: Located, given_r90: float | None = None) -> tuple[int, float]:
        """(pixels, arcsec/px) of the model's cutout of the object located; a petro model
        takes the object's petroR90_r, else ``given_r90`` (a job row's own), and without
        either the 422 saying so."""
        obj = located.obj
        r90 = None if obj is None else obj.petroR90_r
        try:
            return self.model.geometry(given_r90 if r90 is None else r90)
        except GalmetError as exc:
            raise ApiError(422, str(exc), ["no_petro_radius"]) from None

    async def cutout(self, ra: float, dec: float, size: int, scale: float) -> FetchedCutout:
        """The SkyServer cutout at (ra, dec) of ``size`` px at ``scale`` ″/px: from the cache,
        else fetched and kept.

        Blank (off-footprint) cutouts are kept too; the caller decides what to do with them.
        SkyServer failures are ``ApiError`` 502 or 504.
        """
        row = await self.db.run(cache.get_cutout, ra, dec, scale, size)
        if row is not None:
            pixels = None if row.blank else await to_thread.run_sync(decode_image, row.jpeg)
            return FetchedCutout(row.jpeg, pixels, row.blank)
        fetched = await self.fetch_cutout(ra, dec, size, scale)
        await self.db.run(cache.store_cutout, ra, dec, scale, size, fetched.jpeg, fetched.blank)
        return fetched

    async def cutout_jpeg(self, ra: float, dec: float) -> bytes:
        """The JPEG the model sees for (ra, dec) (centred on the SDSS object there, as the
        prediction is); a blank one is a 422."""
        (located,) = await self.identifier.locate([(ra, dec)])
        ra, dec = located.centre
        cutout = await self.cutout(ra, dec, *self.geometry(located))
        if cutout.blank:
            raise blank_cutout_error(ra, dec)
        return cutout.jpeg

    async def fetch_cutout(
        self, ra: float, dec: float, size: int | None = None, scale: float | None = None
    ) -> FetchedCutout:
        """A cutout from SkyServer (not the cache), by default the fixed-scale model's;
        failures are ``ApiError``."""
        if size is None or scale is None:
            size, scale = self.model.geometry()
        try:
            got = await self.skyserver.cutout(ra, dec, scale=scale, width=size, height=size)
        except SkyServerError as exc:
            raise skyserver_error(exc) from None
        blank = await to_thread.run_sync(lambda: got.blank)
        return FetchedCutout(got.jpeg, None if blank else got.pixels, blank)

    # ------------------------------------------------------------------ uploads
    async def predict_upload(self, data: bytes) -> PredictionOut:
        """Cached by SHA-256, else checked and decoded once and predicted."""
        m = self.model
        if len(data) > INLINE_HASH_BYTES:
            sha256 = await to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        else:
            sha256 = hashlib.sha256(data).hexdigest()
        # A cached row means these very bytes passed the upload check before: not decoded again.
        row = await self.db.run(cache.find_image, sha256, m.version, m.tta)
        if row is not None:
            answer = self.output(row, cached=True)
            self.hot.put(("img", sha256, m.version, m.tta), encode(answer))
            return answer
        try:
            image = await to_thread.run_sync(check_upload, data, m.input_size, m.trained_size)
        except BadImage as exc:
            raise ApiError(exc.status, str(exc)) from None
        if image.blank:
            raise ApiError(422, "the image is blank (near-black): nothing to measure", ["blank"])
        flags = list(image.flags)
        if m.scale_mode == "petro":
            flags.append("petro_scale_assumed")  # taken as framed the petro way
        if not centre_has_source(image.pixels):
            flags.append("no_source_at_centre")
        row = await self._predict_and_store(image.pixels, flags, image_sha256=image.sha256)
        return self.output(row, cached=False)

    # ------------------------------------------------------------------ the model
    async def predict_images(self, images: list[np.ndarray], tta: int) -> list[dict]:
        """Prediction records for decoded images, through the micro-batching engine."""
        return await self.engine.predict(images, tta)

    async def _predict_and_store(self, pixels: np.ndarray, flags: list[str], **key):
        """Run the model on one image and upsert the result under ``key`` (position or image
        hash); returns the cache row."""
        m = self.model
        # shed: someone waits on this answer; past the engine's bound it is a 503, not a queue.
        record = (await self.engine.predict([pixels], m.tta, shed=True))[0]
        return await self.db.run(
            cache.store_prediction, model_version=m.version, tta=m.tta, flags=flags, **record, **key
        )

    def output(self, row, cached: bool, located: Located | None = None) -> PredictionOut:
        """The API's prediction from a cached row (and, by position, the object there)."""
        m = self.model
        flags = list(row.flags) + (located.flags if located is not None else [])
        return PredictionOut(
            **public_fields(row.outputs, row.sigma, row.tta_spread, row.ood_score),
            tta=row.tta,
            model_version=m.version,
            model_name=m.name,
            demo=m.demo,
            notice=m.notice,
            cached=cached,
            flags=flags,
            source="coordinates" if row.kind == "sky" else "image",
            ra=located.ra if located is not None else row.ra,
            dec=located.dec if located is not None else row.dec,
            matched_ra=row.ra,
            matched_dec=row.dec,
            object=None if located is None else object_out(located, self.settings.skyserver_url),
            object_error=None if located is None else located.reason,
            image_sha256=row.image_sha256,
        )


def sky_answer_key(ra: float, dec: float, model_version: str, tta: int) -> tuple:
    """The hot-answer key of a position asked: exact, as the answer echoes it. By ``repr``,
    because 0.0 == -0.0 (one key) while the answers echo "0.0" and "-0.0"."""
    return ("sky", repr(ra), repr(dec), model_version, tta)


def encode(answer: PredictionOut) -> bytes:
    """The JSON FastAPI sends for ``answer`` as the route's response model."""
    return answer.model_dump_json(by_alias=True).encode()


def check_something_there(flags: list[str], located: Located) -> None:
    """The 422 where there is nothing to measure: no source at the centre of the cutout, and
    no SDSS object at the position (a star or an unknown object keeps its prediction)."""
    if "no_source_at_centre" in flags and located.status == "none":
        raise no_galaxy_error(located.ra, located.dec)


def object_out(located: Located, skyserver_url: str) -> ObjectOut | None:
    obj = located.obj
    if obj is None:
        return None
    return ObjectOut(**obj.as_dict(), explore_url=explore_url(skyserver_url, obj.objID))


def explore_url(skyserver_url: str, obj_id: int) -> str:
    """SkyServer's Explore page for an object (the release is part of the base URL)."""
    return f"{skyserver_url.rstrip('/')}/VisualTools/explore/summary?id={obj_id}"
