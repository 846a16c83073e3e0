"""Mock SDSS sky: SDSS-like galaxies whose metallicity follows known relations, and their
cutouts, standing in for SDSS offline.

``MockSky`` ties three parts together: the galaxy population and its relations (masses,
SFR, metallicity, sizes, colours; ``training.mock_population``, whose docstring gives every
relation and number), its GalSim imaging (``training.mock_render``) and the paper's sample
cuts (``training.sample``), which mark the objects a catalog query must return.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from astropy.table import Table

from galmet.training.mock_population import MockSkyConfig, draw_population
from galmet.training.mock_render import Renderer, in_footprint
from galmet.training.sample import CATALOG_COLUMNS, mask

__all__ = ["MockSky", "MockSkyConfig"]

#: The population knobs added when the mock was matched to the real sample's metallicity
#: distribution, at the values that reproduce a sky written before them (whose mock.json
#: does not list them): Bell's M/L, quenching and AGN at higher mass, no mass dependence of
#: the main sequence's scatter or the SFR term.
_BEFORE_REAL_MATCH = {
    "ml_intercept": -0.306,
    "ml_slope": 1.097,
    "quench_logm": 10.5,
    "quench_width": 0.25,
    "agn_max": 0.3,
    "agn_logm": 10.6,
    "sfms_scatter_low": 0.3,
    "disk_gr_min": 0.2,
    "fmr_slope_low": -0.10,
}


class MockSky:
    """A deterministic mock sky of ``n`` sample galaxies (plus spectroscopic objects that
    fail the sample cuts, so the catalog query's cuts have something to cut).

    ``population`` is an astropy Table, one row per spectroscopic object, with the
    SkyServer columns: objID, specObjID, ra, dec, z, zErr, rChi2, class, modelMag_*,
    modelMagErr_*, petroMag_*, petroMagErr_*, petroR50_r, petroR90_r, oh_p16, oh_p50,
    oh_p84, lgm_tot_p50, sfr_tot_p50, bptclass, and latent columns prefixed ``true_``.
    ``in_sample`` marks the rows that pass every cut of the paper's selection.
    """

    def __init__(self, n: int, seed: int = 0, config: MockSkyConfig | None = None) -> None:
        if n < 1:
            raise ValueError("a mock sky needs at least one galaxy")
        self.n = n
        self.seed = seed
        self.config = config or MockSkyConfig()
        self.population = draw_population(n, seed, self.config)
        self.in_sample = mask(self.population)
        self._renderer = Renderer(self.population, seed, self.config)

    @classmethod
    def from_dir(cls, path: str | Path) -> MockSky:
        """The mock sky that ``galmet simulate`` wrote to ``path`` (read from mock.json)."""
        meta = json.loads((Path(path) / "mock.json").read_text())
        known = {f.name for f in fields(MockSkyConfig)}
        stored = meta.get("config", {})
        config = {k: v for k, v in _BEFORE_REAL_MATCH.items() if stored and k not in stored}
        config.update(
            {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
        )
        return cls(meta["n"], meta["seed"], MockSkyConfig(**config))

    def metadata(self) -> dict:
        """What reproduces this sky (n, seed, config) and its oracle floor."""
        return {
            "n": self.n,
            "seed": self.seed,
            "config": asdict(self.config),
            "oracle_floor_rmse": self.oracle_floor(),
            "oracle_floor_expected": self.expected_oracle_floor(),
        }

    # -------------------------------------------------------------------- tables
    def catalog(self) -> Table:
        """The sample rows, columns ``CATALOG_COLUMNS``."""
        return self.population[self.in_sample][CATALOG_COLUMNS]

    def truth(self) -> Table:
        """Latent parameters of the sample rows (objID + ``true_*`` columns)."""
        cols = ["objID"] + [c for c in self.population.colnames if c.startswith("true_")]
        return self.population[self.in_sample][cols]

    def oracle_floor(self) -> float:
        """RMSE of the measured oh_p50 about its expectation given every latent (sample rows)."""
        s = self.population[self.in_sample]
        return float(np.sqrt(np.mean((s["oh_p50"] - s["true_oh_mean"]) ** 2)))

    def expected_oracle_floor(self) -> float:
        """The same floor from the configured scatters (what ``oracle_floor`` estimates)."""
        err = np.asarray(self.population["true_oh_err"])[self.in_sample]
        return float(np.sqrt(self.config.oh_hidden_scatter**2 + np.mean(err**2)))

    # ----------------------------------------------------------------- rendering
    def in_footprint(self, ra: float, dec: float) -> bool:
        """Whether (ra, dec) [deg] lies inside the mock imaging footprint."""
        return in_footprint(ra, dec)

    def render(
        self, ra: float, dec: float, scale: float = 0.296, width: int = 128, height: int = 128
    ) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of the sky centred on (ra, dec) [deg].

        North is up and east is left, as in SDSS cutouts; ``scale`` is arcsec per pixel.
        """
        return self._renderer.render(ra, dec, scale, width, height)

    def cutout_jpeg(
        self, ra: float, dec: float, scale: float = 0.296, width: int = 128, height: int = 128
    ) -> bytes:
        """``render`` encoded as JPEG, as SkyServer's getjpeg returns it."""
        return self._renderer.cutout_jpeg(ra, dec, scale, width, height)

    def field_objects(self, ra: float, dec: float, radius_deg: float):
        """The field galaxies and stars the cutouts draw near (ra, dec): (kind, ra, dec,
        half-light radius ", Sérsic n, g/r/i fluxes in nmgy), the same on every call."""
        return self._renderer._field_objects(ra, dec, radius_deg)
