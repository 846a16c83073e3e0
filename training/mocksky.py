"""Mock SDSS sky: SDSS-like galaxies whose metallicity follows known relations.

INTERFACE STUB -- the physics and rendering are being written; signatures are final.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

BANDS = "ugriz"
#: Columns of ``catalog.csv``, in the order ``galmet catalog`` writes them.
CATALOG_COLUMNS: list[str] = (
    ["objID", "ra", "dec", "z", "zErr"]
    + [f"modelMag_{b}" for b in BANDS]
    + [f"modelMagErr_{b}" for b in BANDS]
    + [f"petroMag_{b}" for b in BANDS]
    + [f"petroMagErr_{b}" for b in BANDS]
    + ["petroR50_r", "petroR90_r", "oh_p16", "oh_p50", "oh_p84", "lgm_tot_p50", "sfr_tot_p50",
       "bptclass"]
)

#: The mock imaging footprint: ra_min, ra_max, dec_min, dec_max in degrees.
FOOTPRINT = (130.0, 230.0, 0.0, 60.0)


@dataclass(frozen=True)
class MockSkyConfig:
    """Knobs of the mock sky (defaults documented in the module docstring)."""


class MockSky:
    """A deterministic mock sky of ``n`` sample galaxies (plus spectroscopic objects that
    fail the sample cuts, so the catalog query's cuts have something to cut).

    ``population`` is an astropy Table, one row per spectroscopic object, with the
    SkyServer columns: objID, specObjID, ra, dec, z, zErr, rChi2, class, modelMag_*,
    modelMagErr_*, petroMag_*, petroMagErr_*, petroR50_r, petroR90_r, oh_p16, oh_p50,
    oh_p84, lgm_tot_p50, sfr_tot_p50, bptclass, and latent columns prefixed ``true_``.
    ``in_sample`` marks the rows that pass every cut of the paper's selection.
    """

    population: Table
    in_sample: np.ndarray

    def __init__(self, n: int, seed: int = 0, config: MockSkyConfig | None = None) -> None:
        raise NotImplementedError

    def catalog(self) -> Table:
        """The sample rows, columns ``CATALOG_COLUMNS``."""
        raise NotImplementedError

    def in_footprint(self, ra: float, dec: float) -> bool:
        raise NotImplementedError

    def render(self, ra: float, dec: float, scale: float = 0.296, width: int = 128,
               height: int = 128) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of the sky centred on (ra, dec) [deg]."""
        raise NotImplementedError

    def cutout_jpeg(self, ra: float, dec: float, scale: float = 0.296, width: int = 128,
                    height: int = 128) -> bytes:
        """``render`` encoded as JPEG, as SkyServer's getjpeg returns it."""
        raise NotImplementedError
