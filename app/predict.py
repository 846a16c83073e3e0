"""``galmet predict``: predictions for image files or sky coordinates, without the server.

``galmet predict --model MODEL IMAGE...`` predicts each JPEG/PNG cutout;
``galmet predict --model MODEL --ra RA --dec DEC`` fetches the SDSS cutout there first (the
cutout the model needs: ``galmet.predictor.fetch_geometry``). Files are checked by the
service's own upload rule (``galmet.images.check_upload``), every image is decoded once, and
the fields printed are the service's (``galmet.record``).

Coordinates are decimal degrees or sexagesimal strings read by astropy (``10:00:00`` is
hours for RA, ``+02:00:00`` degrees for Dec; ``150d`` or ``10h00m00s`` say their unit).

A model trained on petro-scaled cutouts (``galmet.scale_mode``) takes each cutout's scale
from the ``petroR90_r`` of the SDSS object identified at the position; where none is, the
answer is a one-line refusal. Image files are taken as they are, flagged
``petro_scale_assumed``.
A negative sexagesimal Dec needs ``=`` to get past the option parser: ``--dec=-02:00:00``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from galmet import sky
from galmet.d4 import TTA_LEVELS, TTA_LEVELS_TEXT, check_tta
from galmet.errors import GalmetError
from galmet.images import BadImage, centre_has_source, check_upload, decode_image
from galmet.model import Checkpoint, file_sha256
from galmet.objects import DEFAULT_RADIUS_ARCSEC, nearest_objects, object_flags
from galmet.predictor import (
    TTA_CPU,
    TTA_GPU,
    Predictor,
    default_tta,
    fetch_geometry,
    training_geometry,
)
from galmet.record import field_names, public_fields, record_flags
from galmet.scale_mode import recorded_scale_mode
from galmet.skyserver import DEFAULT_SCALE, DEFAULT_SKYSERVER_URL, SkyServerClient, SkyServerError

#: (pixels, arcsec/px) of the cutout to fetch, given the object's petroR90_r (or None).
Geometry = Callable[[float | None], tuple[int, float]]


@dataclass
class Source:
    """One thing to predict: its pixels at the model's input size, where they came from,
    and quality flags."""

    name: str
    pixels: np.ndarray
    ra: float | None = None
    dec: float | None = None
    flags: list[str] = field(default_factory=list)
    object: dict | None = None  # the SDSS object the prediction is about (by position)
    object_error: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (.pt)")
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="JPEG/PNG cutouts")
    parser.add_argument("--ra", help="right ascension: degrees, or hh:mm:ss (hours)")
    parser.add_argument("--dec", help="declination: degrees, or dd:mm:ss (write --dec=-dd:mm:ss)")
    parser.add_argument(
        "--skyserver",
        help="SkyServer base URL with the release (default: $GALMET_SKYSERVER_URL, else "
        f"{DEFAULT_SKYSERVER_URL})",
    )
    parser.add_argument(
        "--scale",
        type=float,
        help="arcsec per pixel of the training cutouts (default: from the model, else "
        f"{DEFAULT_SCALE})",
    )
    parser.add_argument(
        "--match-radius",
        type=float,
        default=float(os.environ.get("GALMET_MATCH_RADIUS_ARCSEC", DEFAULT_RADIUS_ARCSEC)),
        help="centre on the SDSS object within this many arcsec of --ra/--dec, as the service "
        "does (default: $GALMET_MATCH_RADIUS_ARCSEC, else "
        f"{DEFAULT_RADIUS_ARCSEC:g}; 0: no look-up)",
    )
    parser.add_argument(
        "--targets",
        type=Path,
        help="a target list (CSV with ra, dec[, id], JSON, VOTable or FITS) run as a batch job in "
        "this process, the service's way, without a server; results in FILE.galmet.csv (or --out)",
    )
    parser.add_argument(
        "--out", type=Path, help="with --targets: the results file (.csv, .json, .vot or .fits)"
    )
    parser.add_argument(
        "--tta",
        type=int,
        choices=TTA_LEVELS,
        default=None,
        help=f"TTA copies (default: what the service uses, {TTA_CPU} on a CPU, "
        f"{TTA_GPU} on a GPU, or $GALMET_TTA)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


# ------------------------------------------------------------------------------ coordinates
def parse_ra(text: str) -> float:
    """RA in degrees from decimal degrees or a sexagesimal string (hours unless it says ``d``)."""
    try:
        return sky.parse_ra(text, "RA")
    except ValueError as exc:
        raise GalmetError(str(exc)) from None


def parse_dec(text: str) -> float:
    """Dec in degrees from decimal degrees or a sexagesimal string (degrees)."""
    try:
        return sky.parse_dec(text, "Dec")
    except ValueError as exc:
        raise GalmetError(str(exc)) from None


# ------------------------------------------------------------------------------ sources
async def _fetch(url: str, ra: float, dec: float, geometry: Geometry, radius: float):
    """The SDSS object at (ra, dec) (or why it is unknown) and the cutout centred on it, of
    the size and scale ``geometry`` gives for the object's petroR90_r."""
    async with SkyServerClient(url) as client:
        obj, status, reason = None, "off", None
        if radius:
            try:
                (obj,) = await nearest_objects(client, [(ra, dec)], radius)
                status = "found" if obj is not None else "none"
            except SkyServerError as exc:
                status, reason = "unknown", f"the SDSS object look-up failed: {exc.reason}"
        centre = (obj.ra, obj.dec) if obj is not None else (ra, dec)
        size, scale = geometry(None if obj is None else obj.petroR90_r)
        cutout = await client.cutout(*centre, scale=scale, width=size, height=size)
        return obj, status, reason, cutout


def fetch_source(
    url: str, ra: float, dec: float, geometry: Geometry, input_size: int, radius: float
) -> Source:
    """The SDSS cutout for (ra, dec), centred on the SDSS object within ``radius`` arcsec
    (none: 0) as the service does; refuses a blank (off-footprint) one, and a position with
    nothing to measure."""
    try:
        obj, status, reason, cutout = asyncio.run(_fetch(url, ra, dec, geometry, radius))
    except SkyServerError as exc:
        raise GalmetError(
            f"{exc} (SkyServer at {url}: set --skyserver or GALMET_SKYSERVER_URL to use another)"
        ) from None
    if cutout.blank:
        raise GalmetError(
            f"the cutout at RA {ra:.6f}, Dec {dec:+.6f} is blank: the position is off the "
            "SDSS imaging footprint, so there is nothing to predict"
        )
    pixels = decode_image(cutout.pixels, input_size)
    flags = [] if centre_has_source(pixels) else ["no_source_at_centre"]
    if flags and status == "none":
        raise GalmetError(
            f"no galaxy at RA {ra:.6f}, Dec {dec:+.6f}: no source at the centre of the SDSS "
            f"cutout and no SDSS object within {radius:g}″"
        )
    flags += object_flags(status, None if obj is None else obj.type)
    source = Source(f"{ra:.6f} {dec:+.6f}", pixels, ra, dec, flags)
    source.object = None if obj is None else obj.as_dict()
    source.object_error = reason
    return source


def read_source(path: Path, input_size: int, training_size: int) -> Source:
    """An image file, checked as the service checks uploads, with the same flags."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GalmetError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        image = check_upload(data, input_size, training_size)
    except BadImage as exc:
        raise GalmetError(f"{path}: {exc}") from None
    if image.blank:
        raise GalmetError(f"{path} is blank (near-black): nothing to measure")
    return Source(str(path), image.pixels, flags=image.flags)


# ------------------------------------------------------------------------------ output
def records(sources: list[Source], raw: list[dict], version: str, tta: int) -> list[dict]:
    """One dict per source with the service's prediction fields."""
    out = []
    for src, r in zip(sources, raw, strict=True):
        rec: dict = {"source": src.name}
        if src.ra is not None:
            rec |= {"ra": src.ra, "dec": src.dec, "object": src.object}
            if src.object_error:
                rec["object_error"] = src.object_error
        fields = public_fields(r["outputs"], r["sigma"], r["tta_spread"], r.get("ood_score"))
        rec |= {k: v for k, v in fields.items() if v is not None or k == "ood_score"}
        flags = list(dict.fromkeys([*src.flags, *record_flags(r)]))
        rec |= {"tta": tta, "model_version": version, "flags": flags}
        out.append(rec)
    return out


def format_table(recs: list[dict], outputs: list[str]) -> str:
    """A plain text table: source, each output ± sigma, TTA spread, OOD score, model
    version, flags."""
    names = [field_names(o) for o in outputs]
    header = ["source"] + [v for v, _ in names] + ["tta spread", "ood", "model", "flags"]
    rows = [
        [r["source"]]
        + [f"{r[v]:.4f} ± {r[s]:.4f}" for v, s in names]
        + [
            ", ".join(f"{r['tta_spread'][v]:.4f}" for v, _ in names),
            "-" if r.get("ood_score") is None else f"{r['ood_score']:.3f}",
            r["model_version"][:12],
            ",".join(r["flags"]) or "-",
        ]
        for r in recs
    ]
    table = [header, *rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(line.rstrip() for line in lines)


def main(args: argparse.Namespace) -> int:
    from galmet.device import pick_device

    if args.targets is not None:
        return _targets(args)
    by_coords = args.ra is not None or args.dec is not None
    if by_coords and args.images:
        raise GalmetError("give image files or --ra and --dec, not both")
    if not by_coords and not args.images:
        raise GalmetError("nothing to predict: give image files, or --ra and --dec")
    if by_coords and (args.ra is None or args.dec is None):
        raise GalmetError("--ra and --dec go together")
    if not args.model.is_file():
        raise GalmetError(f"no model file {args.model}")
    ck = Checkpoint.load(args.model)
    device = pick_device(args.device)
    if by_coords:
        ra, dec = parse_ra(args.ra), parse_dec(args.dec)
        url = args.skyserver or os.environ.get("GALMET_SKYSERVER_URL") or DEFAULT_SKYSERVER_URL
        geometry = partial(fetch_geometry, ck, args.scale)
        sources = [fetch_source(url, ra, dec, geometry, ck.input_size, args.match_radius)]
    else:
        size, _ = training_geometry(ck, args.scale)
        sources = [read_source(path, ck.input_size, size) for path in args.images]
        if recorded_scale_mode(ck.config) == "petro":
            for src in sources:
                src.flags.append("petro_scale_assumed")  # taken as framed the petro way

    predictor = Predictor(ck, device)
    tta = default_tta(device, args.tta if args.tta is not None else _env_tta())
    raw = predictor.predict_arrays([s.pixels for s in sources], tta)
    notice = (ck.config or {}).get("notice") if (ck.config or {}).get("demo") else None
    recs = records(sources, raw, file_sha256(args.model), tta)
    if notice:
        for rec in recs:
            rec |= {"demo": True, "notice": notice}
    if args.json:
        print(json.dumps(recs, indent=2))
    else:
        print(format_table(recs, list(ck.outputs)))
        print(f"(TTA {tta}; ± is the calibrated 1σ uncertainty; dex)")
        if notice:
            print(f"NOTE: {notice}")
    return 0


def _env_tta() -> int | None:
    """``GALMET_TTA``, so that the command line answers as the service does."""
    value = os.environ.get("GALMET_TTA")
    if not value:
        return None
    try:
        return check_tta(int(value))
    except ValueError:
        raise GalmetError(f"bad GALMET_TTA: must be {TTA_LEVELS_TEXT}, got {value!r}") from None


def _targets(args: argparse.Namespace) -> int:
    """``--targets``: the service's batch path, in this process (``galmet.app.local_jobs``)."""
    from galmet.app import local_jobs
    from galmet.app.core.config import checked_settings

    if args.images or args.ra is not None or args.dec is not None:
        raise GalmetError("give --targets, image files, or --ra and --dec: one of them")
    if not args.targets.is_file():
        raise GalmetError(f"{args.targets}: no such file")
    if not args.model.is_file():
        raise GalmetError(f"no model file {args.model}")
    settings = checked_settings()
    update = {"model": args.model, "device": args.device}
    if args.tta is not None:
        update["tta"] = args.tta
    if args.skyserver:
        update["skyserver_url"] = args.skyserver
    settings = settings.model_copy(update=update)
    out = local_jobs.output_path(args.targets, args.out)
    status = local_jobs.run(settings, args.targets, out)
    c = status["counts"]
    print(
        f"{c['done']} predicted, {c['failed']} failed, {c['invalid']} invalid "
        f"(model {status['model_version'][:12]}, TTA {status['tta']}); results: {out}"
    )
    return 0
