"""``galmet predict``: predictions for image files or sky coordinates, without the server.

``galmet predict --model MODEL IMAGE...`` predicts each JPEG/PNG cutout;
``galmet predict --model MODEL --ra RA --dec DEC`` fetches the SDSS cutout there first.
Both go through ``Predictor.predict_bytes``, the preprocessing of training and the service.

Coordinates are decimal degrees or sexagesimal strings read by astropy (``10:00:00`` is
hours for RA, ``+02:00:00`` degrees for Dec; ``150d`` or ``10h00m00s`` say their unit).
A negative sexagesimal Dec needs ``=`` to get past the option parser: ``--dec=-02:00:00``.

Which cutout is fetched: the model must see what it saw in training, so the cutout has the
field of view and pixel scale of the training images, and the one resizing step of training
(``training.preprocess.decode_image``, bilinear) brings it to the model's input size. For a
model trained on 128 px cutouts at 0.296″/px resized to 64 px, that means fetching 128 px
at 0.296″/px and resizing here, not asking SkyServer for 64 px at 0.592″/px: SkyServer's
own resampling and JPEG coding of a coarser image are not the pixels the model learned
from. See ``cutout_geometry`` for where the size and scale come from.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from galmet.app import coords
from galmet.app.skyserver import (
    DEFAULT_SCALE,
    DEFAULT_SIZE,
    DEFAULT_SKYSERVER_URL,
    MAX_SIZE,
    MIN_SIZE,
    SkyServerClient,
    is_blank_cutout,
)
from galmet.errors import GalmetError
from galmet.training.model import Checkpoint, Prediction, Predictor, file_sha256
from galmet.training.preprocess import decode_image

#: Output names of the design's prediction record: catalog column -> (value, sigma) fields.
FIELDS = {"oh_p50": ("oh_p50", "oh_sigma"), "lgm_tot_p50": ("log_mstar", "log_mstar_sigma")}
#: Image modes that are one grey channel (flagged ``grayscale`` after conversion to RGB).
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class Source:
    """One thing to predict: encoded image bytes, where they came from, and quality flags."""

    name: str
    data: bytes
    ra: float | None = None
    dec: float | None = None
    flags: list[str] = field(default_factory=list)


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
    parser.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=8, help="TTA copies (8)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


# ------------------------------------------------------------------------------ coordinates
def parse_ra(text: str) -> float:
    """RA in degrees from decimal degrees or a sexagesimal string (hours unless it says ``d``)."""
    try:
        return coords.parse_ra(text, "RA")
    except ValueError as exc:
        raise GalmetError(str(exc)) from None


def parse_dec(text: str) -> float:
    """Dec in degrees from decimal degrees or a sexagesimal string (degrees)."""
    try:
        return coords.parse_dec(text, "Dec")
    except ValueError as exc:
        raise GalmetError(str(exc)) from None


# ------------------------------------------------------------------------------ cutouts
def training_geometry(ck: Checkpoint, scale: float | None = None) -> tuple[int, float]:
    """(pixels, arcsec per pixel) of the images the model was trained on, before resizing.

    The scale is ``scale`` if given, else the checkpoint config's ``pixel_scale`` (or
    ``scale``), else the design's 0.296″/px. The size is the config's ``image_size`` if
    recorded; else the model's input size when training kept the images' size (no
    ``--size``); else the design's 128 px, which ``--size`` then resized.
    """
    cfg = ck.config or {}
    if scale is None:
        scale = cfg.get("pixel_scale") or cfg.get("scale") or DEFAULT_SCALE
    if not scale > 0:
        raise GalmetError("--scale must be positive (arcsec per pixel)")
    size = cfg.get("image_size") or (DEFAULT_SIZE if cfg.get("size") else ck.input_size)
    return int(size), float(scale)


def cutout_geometry(ck: Checkpoint, scale: float | None = None) -> tuple[int, float]:
    """(pixels, arcsec per pixel) of the SkyServer cutout to fetch for the model.

    The training images' geometry (``training_geometry``); a size outside SkyServer's
    64…2048 px is fetched at the nearest allowed size over the same field (the scale changes
    accordingly) and resized to the input size like any cutout.
    """
    size, scale = training_geometry(ck, scale)
    fetch = min(max(size, MIN_SIZE), MAX_SIZE)
    return fetch, scale * size / fetch


async def _fetch(url: str, ra: float, dec: float, size: int, scale: float) -> bytes:
    async with SkyServerClient(url) as sky:
        return await sky.cutout(ra, dec, scale=scale, width=size, height=size)


def fetch_source(url: str, ra: float, dec: float, size: int, scale: float) -> Source:
    """The SDSS cutout at (ra, dec); refuses a blank (off-footprint) one."""
    data = asyncio.run(_fetch(url, ra, dec, size, scale))
    if is_blank_cutout(data):
        raise GalmetError(
            f"the cutout at RA {ra:.6f}, Dec {dec:+.6f} is blank: the position is off the "
            "SDSS imaging footprint, so there is nothing to predict"
        )
    return Source(f"{ra:.6f} {dec:+.6f}", data, ra, dec)


def read_source(path: Path, training_size: int) -> Source:
    """An image file, checked to decode, with flags for what the model did not train on."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GalmetError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        pixels = decode_image(data)
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
    except (ValueError, OSError) as exc:
        reason = str(exc).removeprefix("not a readable image: ")
        if "cannot identify image file" in reason:
            reason = "not an image format that can be read"
        raise GalmetError(f"{path} is not a readable JPEG or PNG image ({reason})") from None
    flags = []
    if mode in GREY_MODES:
        flags.append("grayscale")
    elif mode != "RGB":
        flags.append("converted_to_rgb")
    if pixels.shape[:2] != (training_size, training_size):
        # Another size likely means another pixel scale, and size carries information.
        flags.append("size_differs_from_training")
    if is_blank_cutout(pixels):
        flags.append("blank")
    return Source(str(path), data, flags=flags)


# ------------------------------------------------------------------------------ output
def records(sources: list[Source], pred: Prediction, version: str, tta: int) -> list[dict]:
    """One dict per source with the design's prediction fields."""
    out = []
    for i, src in enumerate(sources):
        rec: dict = {"source": src.name}
        if src.ra is not None:
            rec |= {"ra": src.ra, "dec": src.dec}
        spread = {}
        for j, name in enumerate(pred.outputs):
            value, sigma = FIELDS.get(name, (name, f"{name}_sigma"))
            rec[value] = float(pred.mean[i, j])
            rec[sigma] = float(pred.sigma[i, j])
            spread[value] = float(pred.spread[i, j])
        rec |= {"tta": tta, "tta_spread": spread, "model_version": version, "flags": src.flags}
        out.append(rec)
    return out


def format_table(recs: list[dict], outputs: list[str]) -> str:
    """A plain text table: source, each output ± sigma, TTA spread, model version, flags."""
    names = [FIELDS.get(o, (o, f"{o}_sigma")) for o in outputs]
    header = ["source"] + [v for v, _ in names] + ["tta spread", "model", "flags"]
    rows = [
        [r["source"]]
        + [f"{r[v]:.3f} ± {r[s]:.3f}" for v, s in names]
        + [
            ", ".join(f"{r['tta_spread'][v]:.4f}" for v, _ in names),
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
    from galmet.training.train import pick_device

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
        sources = [fetch_source(url, ra, dec, *cutout_geometry(ck, args.scale))]
    else:
        size, _ = training_geometry(ck, args.scale)
        sources = [read_source(path, size) for path in args.images]

    predictor = Predictor(ck, device)
    pred = predictor.predict_bytes([s.data for s in sources], args.tta)
    recs = records(sources, pred, file_sha256(args.model), args.tta)
    if args.json:
        print(json.dumps(recs, indent=2))
    else:
        print(format_table(recs, pred.outputs))
        print(f"(TTA {args.tta}; ± is the calibrated 1σ uncertainty; dex)")
    return 0
