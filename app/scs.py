"""The cone search's VOTables (IVOA Simple Cone Search 1.03, with 1.1's MAXREC): the answer,
the metadata (``SR=0``: the fields and no rows) and the error document.

The answer is one RESOURCE holding one TABLE, one row per galaxy. SCS 1.03 asks for exactly
one FIELD with each of the UCD1 words ``ID_MAIN`` (a char), ``POS_EQ_RA_MAIN`` and
``POS_EQ_DEC_MAIN`` (doubles, degrees); the other fields carry UCD1+ words, units and
descriptions. ``VERB`` 1 gives the fewest columns, 2 (the default) the usual ones, 3 all. The
caps (``GALMET_SCS_MAX_SR``, ``GALMET_SCS_MAX_ROWS``) are PARAMs of the table and INFOs of
the resource, so a client reads them from any answer. An error is a VOTable with one
``<INFO name="Error" value="…"/>`` under the root, as SCS requires.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from galmet.app.cone import ConeGalaxy
from galmet.app.model_info import LoadedModel

#: SCS's media type for its VOTables.
CONTENT_TYPE = "text/xml;content=x-votable"
FLAG_SEPARATOR = ";"

Kind = Literal["char", "double", "boolean"]


@dataclass(frozen=True)
class Column:
    """A FIELD of the answer: the lowest VERB showing it, its VOTable type and metadata, and
    how a row's value is read from a galaxy (None: a null cell)."""

    name: str
    verb: int
    kind: Kind
    unit: str | None
    ucd: str
    description: str
    value: Callable[[ConeGalaxy], Any]
    mass_only: bool = False  # only for models that predict stellar mass


def _p(name: str) -> Callable[[ConeGalaxy], Any]:
    return lambda g: None if g.prediction is None else getattr(g.prediction, name)


def _flags(g: ConeGalaxy) -> str:
    return FLAG_SEPARATOR.join(g.prediction.flags) if g.prediction else ""


def _spread(g: ConeGalaxy) -> float | None:
    return None if g.prediction is None else g.prediction.tta_spread.get("oh_p50")


def _explore(g: ConeGalaxy) -> str | None:
    p = g.prediction
    return None if p is None or p.object is None else p.object.explore_url


COLUMNS = (
    Column("objID", 1, "char", None, "ID_MAIN", "SDSS photometric objID",
           lambda g: str(g.obj.objID)),
    Column("ra", 1, "double", "deg", "POS_EQ_RA_MAIN", "right ascension (ICRS) of the galaxy",
           lambda g: g.obj.ra),
    Column("dec", 1, "double", "deg", "POS_EQ_DEC_MAIN", "declination (ICRS) of the galaxy",
           lambda g: g.obj.dec),
    Column("oh_p50", 1, "double", "dex", "phys.abund.Z",
           "gas-phase metallicity 12 + log10(O/H) predicted from the SDSS gri image",
           _p("oh_p50")),
    Column("oh_sigma", 1, "double", "dex", "stat.error;phys.abund.Z",
           "1-sigma uncertainty of oh_p50 (calibrated: 68% of residuals within it)",
           _p("oh_sigma")),
    Column("flags", 1, "char", None, "meta.code.qual",
           f"quality flags separated by {FLAG_SEPARATOR!r} (empty: none)", _flags),
    Column("separation_arcsec", 2, "double", "arcsec", "pos.angDistance",
           "distance of the galaxy from the centre of the cone",
           lambda g: g.obj.separation_arcsec),
    Column("oh_p16", 2, "double", "dex", "phys.abund.Z;stat.min",
           "oh_p50 - oh_sigma (16th percentile)", _p("oh_p16")),
    Column("oh_p84", 2, "double", "dex", "phys.abund.Z;stat.max",
           "oh_p50 + oh_sigma (84th percentile)", _p("oh_p84")),
    Column("log_mstar", 2, "double", "dex", "phys.mass",
           "log10 of the stellar mass in solar masses, predicted from the image",
           _p("log_mstar"), mass_only=True),
    Column("log_mstar_sigma", 2, "double", "dex", "stat.error;phys.mass",
           "1-sigma uncertainty of log_mstar", _p("log_mstar_sigma"), mass_only=True),
    Column("reason", 2, "char", None, "meta.note",
           "why the galaxy has no prediction (empty when it has one)", lambda g: g.reason or ""),
    Column("model_version", 2, "char", None, "meta.version",
           "SHA-256 of the model's checkpoint", _p("model_version")),
    Column("cached", 3, "boolean", None, "meta.code",
           "true when the prediction came from the cache", _p("cached")),
    Column("oh_tta_spread", 3, "double", "dex", "stat.stdev;phys.abund.Z",
           "standard deviation of oh_p50 over the test-time augmentation copies", _spread),
    Column("petroR90_r", 3, "double", "arcsec", "phys.angSize;src",
           "r-band Petrosian radius holding 90% of the light", lambda g: g.obj.petroR90_r),
    Column("petroMag_r", 3, "double", "mag", "phot.mag;em.opt.R",
           "r-band Petrosian magnitude", lambda g: g.obj.petroMag_r),
    Column("explore_url", 3, "char", None, "meta.ref.url",
           "the galaxy's page in SkyServer's Explore tool", _explore),
)  # fmt: skip


def columns(verb: int, model: LoadedModel) -> list[Column]:
    """The columns of an answer at ``verb`` for ``model`` (mass columns where it predicts
    mass)."""
    mass = "lgm_tot_p50" in model.checkpoint.outputs
    return [c for c in COLUMNS if c.verb <= verb and (mass or not c.mass_only)]


def cone_votable(
    galaxies: list[ConeGalaxy],
    *,
    verb: int,
    model: LoadedModel,
    max_sr: float,
    max_rows: int,
    overflow: bool = False,
    description: str = "",
) -> bytes:
    """The answer's VOTable: one row per galaxy (none for the metadata query)."""
    from astropy import units as u
    from astropy.io.votable.tree import (
        CooSys,
        Field,
        Info,
        Param,
        Resource,
        TableElement,
        VOTableFile,
    )

    chosen = columns(verb, model)
    votable = VOTableFile()
    resource = Resource(type="results")
    votable.resources.append(resource)
    resource.coordinate_systems.append(CooSys(ID="icrs", system="ICRS"))
    status = "OVERFLOW" if overflow else "OK"
    resource.infos.append(Info(name="QUERY_STATUS", value=status))
    resource.infos.append(Info(name="model_version", value=model.version))
    resource.infos.append(Info(name="model_name", value=model.name))
    if model.notice:
        resource.infos.append(Info(name="notice", value=model.notice))
    resource.infos.append(Info(name="max_sr", value=f"{max_sr:g}"))
    resource.infos.append(Info(name="max_rows", value=str(max_rows)))
    table = TableElement(votable, name="galmet")
    table.description = description or (
        "SDSS galaxies in the cone, nearest first, each with galmet's gas-phase metallicity "
        "(and stellar mass, for models that learned it) predicted from its gri image"
    )
    resource.tables.append(table)
    table.params.extend(
        [
            _param(votable, Param, "MAX_SR", "double", f"{max_sr:g}", "deg",
                   "the largest search radius SR this service takes (GALMET_SCS_MAX_SR)"),
            _param(votable, Param, "MAX_ROWS", "int", str(max_rows), None,
                   "the most galaxies one cone answers (GALMET_SCS_MAX_ROWS); a larger cone is "
                   "an error unless MAXREC asks for the nearest"),
            _param(votable, Param, "model_version", "char", model.version, None,
                   "SHA-256 of the model's checkpoint"),
        ]
    )  # fmt: skip
    for c in chosen:
        field = Field(
            votable,
            name=c.name,
            ID=c.name,
            datatype=c.kind,
            arraysize="*" if c.kind == "char" else None,
            # a unit object, not text: astropy would read "dex" as VOUnit deci-"ex"
            unit=None if c.unit is None else u.Unit(c.unit),
            ucd=c.ucd,
            ref="icrs" if c.ucd.startswith("POS_EQ") else None,
        )
        field.description = c.description
        table.fields.append(field)
    table.create_arrays(len(galaxies))
    for i, galaxy in enumerate(galaxies):
        for c in chosen:
            value = c.value(galaxy)
            missing = value is None
            if missing:
                value = "" if c.kind == "char" else (False if c.kind == "boolean" else math.nan)
            table.array[c.name][i] = value
            table.array.mask[c.name][i] = missing  # after the value: setting one unmasks it
    return write_votable(votable)


def error_votable(message: str) -> bytes:
    """SCS's error document: ``<INFO name="Error" value="message"/>`` under the root."""
    from astropy.io.votable.tree import Info, Resource, VOTableFile

    votable = VOTableFile()
    votable.infos.append(Info(name="Error", value=message))
    resource = Resource(type="results")
    status = Info(name="QUERY_STATUS", value="ERROR")
    status.content = message
    resource.infos.append(status)
    votable.resources.append(resource)
    return write_votable(votable)


def write_votable(votable) -> bytes:
    """The VOTable as TABLEDATA bytes, through astropy's pure-Python writer (its C writer can
    corrupt the heap: see ``galmet.app.results``)."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dex" is not VOUnit; UCD1 words are not UCD1+
        votable.to_xml(out, _debug_python_based_parser=True)
    return out.getvalue()


def _param(votable, param_class, name, datatype, value, unit, description):
    param = param_class(
        votable,
        name=name,
        ID=f"param_{name}",
        datatype=datatype,
        arraysize="*" if datatype == "char" else None,
        value=value,
        unit=unit,
    )
    param.description = description
    return param
