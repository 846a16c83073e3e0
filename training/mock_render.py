"""Imaging of the mock sky: SDSS-like cutouts of a mock population, rendered with GalSim.

Kolmogorov PSF of 1.4" FWHM, sky noise of SDSS depth (r sky 20.9 mag/arcsec^2), field
galaxies and stars placed deterministically per sky cell, so neighbours appear in some
cutouts and every cutout of the same spot looks the same. Colour as SDSS does: astropy's
Lupton RGB of i, r, g -> R, G, B, then JPEG as SkyServer's getjpeg returns it. Outside
``FOOTPRINT`` pixels are black.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from astropy.table import Table

from galmet.training.mock_population import FOOTPRINT, MockSkyConfig, colour_offsets, nmgy

NATIVE_SCALE = 0.396  # SDSS arcsec per pixel

#: A field object: kind ("galaxy" or "star"), ra, dec, half-light radius ["], Sersic n,
#: g, r, i fluxes [nmgy].
FieldObject = tuple[str, float, float, float, float, dict[str, float]]


def in_footprint(ra: float, dec: float) -> bool:
    """Whether (ra, dec) [deg] lies inside the mock imaging footprint."""
    ra0, ra1, dec0, dec1 = FOOTPRINT
    return bool(ra0 <= ra % 360.0 <= ra1 and dec0 <= dec <= dec1)


class Renderer:
    """Draws cutouts of ``population`` (rows with ``ra``, ``dec`` and the ``true_*``
    shape and flux latents) plus field objects seeded by ``seed``."""

    def __init__(self, population: Table, seed: int, config: MockSkyConfig) -> None:
        self.population = population
        self.seed = seed
        self.config = config
        # Sorted by Dec so that a cutout finds its galaxies with a binary search.
        self._dec_order = np.argsort(np.asarray(population["dec"]))
        self._dec_sorted = np.asarray(population["dec"])[self._dec_order]

    def render(
        self, ra: float, dec: float, scale: float = 0.296, width: int = 128, height: int = 128
    ) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of the sky centred on (ra, dec) [deg].

        North is up and east is left, as in SDSS cutouts; ``scale`` is arcsec per pixel.
        """
        import galsim  # imported here so that reading catalogs does not need GalSim
        from astropy.visualization import make_lupton_rgb

        cfg = self.config
        bands = {b: galsim.ImageF(width, height, scale=scale) for b in "gri"}
        cx, cy = (width + 1) / 2, (height + 1) / 2
        cos_dec = max(np.cos(np.radians(dec)), 1e-6)
        half_deg = 0.5 * np.hypot(width, height) * scale / 3600 + 30 / 3600
        psf = galsim.Kolmogorov(fwhm=cfg.psf_fwhm)
        gsparams = galsim.GSParams(maximum_fft_size=8192)

        def place(obj_ra: float, obj_dec: float) -> galsim.PositionD:
            dra = ((obj_ra - ra + 180) % 360 - 180) * cos_dec
            return galsim.PositionD(cx - dra * 3600 / scale, cy + (obj_dec - dec) * 3600 / scale)

        def visible(pos: galsim.PositionD, extent_arcsec: float) -> bool:
            margin = (extent_arcsec + 2 * cfg.psf_fwhm) / scale
            return (
                -margin <= pos.x <= width + 1 + margin and -margin <= pos.y <= height + 1 + margin
            )

        def add(profile, pos: galsim.PositionD, fluxes: dict[str, float]) -> None:
            stamp = galsim.Convolve(profile, psf, gsparams=gsparams).drawImage(
                scale=scale, center=pos
            )
            overlap = stamp.bounds & bands["r"].bounds
            if overlap.isDefined():
                for b, f in fluxes.items():
                    bands[b][overlap] += f * stamp[overlap]

        for row in self._galaxies_near(ra, dec, half_deg):
            pos = place(row["ra"], row["dec"])
            if not visible(pos, 4 * max(row["true_re_disk"], row["true_re_bulge"])):
                continue
            beta = row["true_pa"] * galsim.degrees
            if row["true_bt"] > 0:
                bulge = galsim.Sersic(
                    n=row["true_n_bulge"], half_light_radius=max(row["true_re_bulge"], 0.05)
                )
                add(
                    bulge.shear(q=row["true_q_bulge"], beta=beta),
                    pos,
                    {b: row[f"true_flux_bulge_{b}"] for b in "gri"},
                )
            if row["true_bt"] < 1:
                disk = galsim.Exponential(half_light_radius=max(row["true_re_disk"], 0.05))
                add(
                    disk.shear(q=row["true_q_disk"], beta=beta),
                    pos,
                    {b: row[f"true_flux_disk_{b}"] for b in "gri"},
                )
        if half_deg < 0.5:  # field objects only where a cutout could show them
            for kind, f_ra, f_dec, size, n_sersic, fluxes in self._field_objects(ra, dec, half_deg):
                pos = place(f_ra, f_dec)
                if not visible(pos, 4 * size):
                    continue
                if kind == "star":
                    add(galsim.DeltaFunction(), pos, fluxes)
                else:
                    add(galsim.Sersic(n=n_sersic, half_light_radius=size), pos, fluxes)

        noise_rng = np.random.default_rng(
            [
                self.seed,
                2,
                int(round((ra % 360) * 1e6)),
                int(round((dec + 90) * 1e6)),
                width,
                height,
                int(round(scale * 1e4)),
            ]
        )
        arrays = {}
        for (b, img), sigma in zip(bands.items(), cfg.sky_noise_nmgy, strict=True):
            noise = sigma * scale / NATIVE_SCALE
            # GalSim's row 0 is the bottom of the sky; images put north at the top.
            arrays[b] = np.flipud(img.array) + noise_rng.normal(0, noise, img.array.shape)
        wg, wr, wi = cfg.band_weights
        rgb = make_lupton_rgb(
            wi * arrays["i"],
            wr * arrays["r"],
            wg * arrays["g"],
            minimum=0,
            stretch=cfg.lupton_stretch,
            Q=cfg.lupton_q,
        )
        rgb[~footprint_mask(ra, dec, scale, width, height)] = 0
        return rgb

    def cutout_jpeg(
        self, ra: float, dec: float, scale: float = 0.296, width: int = 128, height: int = 128
    ) -> bytes:
        """``render`` encoded as JPEG, as SkyServer's getjpeg returns it."""
        return encode_jpeg(self.render(ra, dec, scale, width, height), self.config.jpeg_quality)

    def _galaxies_near(self, ra: float, dec: float, radius_deg: float) -> Table:
        lo, hi = np.searchsorted(self._dec_sorted, [dec - radius_deg, dec + radius_deg])
        idx = self._dec_order[lo:hi]
        pop_ra = np.asarray(self.population["ra"])[idx]
        dra = ((pop_ra - ra + 180) % 360 - 180) * np.cos(np.radians(dec))
        return self.population[idx[np.abs(dra) <= radius_deg]]

    def _field_objects(self, ra: float, dec: float, radius_deg: float) -> Iterator[FieldObject]:
        """Faint galaxies and stars, the same for every cutout: drawn per 0.02 deg cell."""
        cell = 0.02
        area = cell * cell  # deg^2 in (ra cos dec, dec) cells
        j0, j1 = int(np.floor((dec - radius_deg) / cell)), int(np.floor((dec + radius_deg) / cell))
        for j in range(j0, j1 + 1):
            # Each Dec row has its own cos(Dec), fixed: the objects stay put on the sky
            # whatever the cutout's centre (the centre's cos(Dec) moved them by arcminutes).
            cos_dec = max(np.cos(np.radians((j + 0.5) * cell)), 1e-3)
            ra_half = radius_deg / max(np.cos(np.radians(dec)), 1e-3)
            i0 = int(np.floor((ra - ra_half) * cos_dec / cell))
            i1 = int(np.floor((ra + ra_half) * cos_dec / cell))
            for i in range(i0, i1 + 1):
                rng = np.random.default_rng([self.seed, 3, i + 10**7, j + 10**7])
                for kind, density in (
                    ("galaxy", self.config.field_galaxies_per_deg2),
                    ("star", self.config.field_stars_per_deg2),
                ):
                    for _ in range(rng.poisson(density * area)):
                        f_ra = (i + rng.random()) * cell / cos_dec
                        f_dec = (j + rng.random()) * cell
                        if kind == "star":
                            r = rng.uniform(14.0, 21.5)
                            gr, size, n_sersic = rng.uniform(0.3, 1.4), 0.0, 0.0
                        else:
                            r = 21.5 - 4.5 * rng.random() ** 2.2  # many more faint ones
                            gr, size = rng.uniform(0.3, 1.2), rng.uniform(0.4, 2.5)
                            n_sersic = float(rng.choice([1.0, 4.0]))
                        col = colour_offsets(np.asarray(gr))
                        fluxes = {b: float(nmgy(r + col[b])) for b in "gri"}
                        yield kind, f_ra, f_dec, size, n_sersic, fluxes


def footprint_mask(ra: float, dec: float, scale: float, width: int, height: int) -> np.ndarray:
    """Which pixels of a cutout centred on (ra, dec) lie inside ``FOOTPRINT``."""
    ra0, ra1, dec0, dec1 = FOOTPRINT
    y = (height - 1) / 2 - np.arange(height)  # row 0 is north
    x = np.arange(width) - (width - 1) / 2
    pix_dec = dec + y[:, None] * scale / 3600
    pix_ra = ra - x[None, :] * scale / 3600 / np.maximum(np.cos(np.radians(pix_dec)), 1e-6)
    pix_ra %= 360
    return (pix_ra >= ra0) & (pix_ra <= ra1) & (pix_dec >= dec0) & (pix_dec <= dec1)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB uint8 array as JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
