"""The mock sky's galaxy population: SDSS-like galaxies whose metallicity follows known
relations, drawn as a table of observables (the SkyServer columns) and latents (``true_*``).

The population is built so that the image carries information about metallicity that g, r,
i magnitudes alone do not, as in real galaxies, and so that the best possible prediction
error (the *oracle floor*) is known.

Relations (x = log10 M*/Msun; concordance cosmology H0 = 70, Om = 0.3):

* Population: z drawn from the comoving volume in [0.005, 0.25]; log M* from the
  Baldry et al. (2012) double Schechter function in [8.0, 11.5]; SDSS main-sample
  magnitude limit petroMag_r < 17.77 applied to the rendered photometry.
* Star formation: log SFR = 0.77 x - 7.53 on the main sequence, with a scatter of 0.3 dex
  at x >= 10.5 widening linearly to 0.55 dex at x <= 8.5 (bursty dwarfs); a quenched
  fraction 1 / (1 + exp(-(x - 10.3) / 0.3)) sits 1.5 dex below it.
* Morphology: r-band bulge fraction B/T rising with mass (0.05 at x = 9 to 0.45 at
  x = 11, scatter 0.1; ~0.6 when quenched); Sersic index of the bulge 2 + (x - 9.5),
  quantised to 0.5; random inclination (cos i uniform, intrinsic disk thickness 0.15)
  and position angle.
* Sizes: Shen et al. (2003) late-type size-mass relation for the disk and early-type
  relation (for the bulge mass) for the bulge, 0.15 dex scatter.
* Colours: bulge g - r = 0.72 + 0.04 (x - 10.5); disk g - r = 0.45 - 0.25 (log sSFR + 10),
  so bluer disks at high specific SFR give colour gradients; r - i, u - g, i - z follow
  g - r. Inclination-dependent dust dims and reddens the disk (A_r up to ~0.8 mag edge-on).
  Luminosity from M/L: log(M/L_r) = -0.840 + 1.654 (g - r) (Zibetti et al. 2009, Chabrier
  IMF like the MPA-JHU masses); disks no bluer than g - r = 0.05.
* Metallicity: Tremonti et al. (2004) MMR, 12 + log(O/H) = -1.492 + 1.847 x - 0.08026 x^2
  (followed down to x = 8), plus terms that the image shows but magnitudes do not fully:
  per dex of SFR above the main sequence -0.10 at x >= 10.5, steepening linearly to -0.25
  at x <= 8.5 (FMR-like, seen as disk colour; the SFR dependence is strongest in dwarfs,
  Mannucci et al. 2010, Andrews & Martini 2013), -0.20 per dex of disk size above the
  size-mass relation (compact galaxies are more metal rich), +0.10 per unit of B/T above
  its mean at that mass. A hidden intrinsic scatter of 0.05 dex sits on top (total ~0.07
  dex at fixed mass for massive galaxies, ~0.12 below x = 9.5), and the "measured" oh_p50
  adds 0.03-0.05 dex noise (larger for fainter galaxies) with matching oh_p16/oh_p84.
* Emission-line class: AGN/composite lines (no metallicity) in a fraction
  0.03 + 0.6 / (1 + exp(-(x - 10.4) / 0.3)) of star-forming galaxies; quenched ones have
  no usable lines.
* Oracle floor: RMSE of oh_p50 about ``true_oh_mean``, the expectation of the measured
  value given every latent that shapes the image; no predictor from images can beat it.

Rejects: the population also holds spectroscopic objects that fail the sample cuts
(quenched or AGN galaxies with oh_p50 = -9999, bad redshift errors, rChi2 >= 2, z < 0.02,
failed u-band photometry), so that a catalog query has something to cut. Omitted for
simplicity: K-corrections, PSF variation between bands and fields, saturation and bleed
trails.

Matching the real sample. The paper's 20,466 test galaxies have oh_p50 quantiles
1/5/16/25/50/75/84/95/99 % = 8.29/8.49/8.71/8.81/8.96/9.05/9.09/9.13/9.19, std 0.200 dex,
skew -1.1, and a forest on g, r, i reaches 0.65 x that spread
(``training.mocksky_reference``). A sample that obeys the MMR follows its mass distribution,
so the choices above set the sample's masses: (1) the Zibetti M/L, steeper in colour than
Bell et al. (2003), makes blue dwarfs brighter, so the magnitude limit keeps more of them;
(2) quenching at 10.3 and AGN/composite lines from 10.4 remove massive galaxies from the
metallicity sample, as in SDSS (sample median log M* ~10.1, 5-95 % ~9.0-10.9); (3) the
wider main sequence of dwarfs and the stronger SFR term there give the metal-poor tail:
the magnitude limit picks the dwarfs that burst, and bursting dwarfs are metal poor.
The result (``python bench/mock_baseline.py``, 30,000 galaxies) is within 0.04 dex of
every quantile, std ~0.20, skew ~-1.2, the forest at 0.62 x the spread (0.61 with the
paper's 90,000 training galaxies). Before these
choices (Bell M/L, x >= 8.5, quenching at 10.5, one main-sequence scatter and SFR term)
the mock had std 0.13 dex, no metal-poor tail (5 % at 8.76) and the forest at 0.85 x; a
``mock.json`` written then lacks the new knobs, and ``MockSky.from_dir`` rebuilds its sky
with the old values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.cosmology import FlatLambdaCDM
from astropy.table import Table

from galmet.training.sample import BANDS, CATALOG_COLUMNS, MISSING, mask

#: The mock imaging footprint: ra_min, ra_max, dec_min, dec_max in degrees.
FOOTPRINT = (130.0, 230.0, 0.0, 60.0)

COSMOLOGY = FlatLambdaCDM(H0=70, Om0=0.3)
_OBJID_BASE = 1237645876861272064
_SPECOBJID_BASE = 299489677444933632


@dataclass(frozen=True)
class MockSkyConfig:
    """Knobs of the mock sky; the module docstring says what each relation is."""

    z_min: float = 0.005
    z_max: float = 0.25
    logm_min: float = 8.0
    logm_max: float = 11.5
    r_limit: float = 17.77  # SDSS main-sample Petrosian r limit
    # log(M/L_r) = ml_intercept + ml_slope (g - r): Zibetti et al. (2009), Chabrier IMF
    ml_intercept: float = -0.840
    ml_slope: float = 1.654
    quench_logm: float = 10.3  # mass where half the galaxies are quenched
    quench_width: float = 0.3  # dex, logistic width of that transition
    agn_max: float = 0.6  # fraction of star-forming galaxies with AGN/composite lines at high mass
    agn_logm: float = 10.4  # mass where half that fraction is reached
    sfms_scatter: float = 0.3  # dex about the main sequence at log M >= 10.5
    sfms_scatter_low: float = 0.55  # ... at log M <= 8.5 (bursty dwarfs), linear in between
    disk_gr_min: float = 0.05  # bluest disk g - r (starbursting dwarfs)
    size_scatter: float = 0.15  # dex
    fmr_slope: float = -0.10  # dex of O/H per dex of SFR above the main sequence, log M >= 10.5
    fmr_slope_low: float = -0.25  # ... at log M <= 8.5, linear in between
    size_slope: float = -0.20  # dex of O/H per dex of disk size above the size-mass relation
    bulge_slope: float = 0.10  # dex of O/H per unit of B/T above its mean at fixed mass
    oh_hidden_scatter: float = 0.05  # intrinsic scatter no image shows
    oh_error_bright: float = 0.03  # measurement error at petroMag_r = 14.5
    oh_error_faint: float = 0.05  # ... at the magnitude limit
    # Imaging (training.mock_render); the population reads psf_fwhm for its sizes.
    psf_fwhm: float = 1.4  # arcsec
    sky_noise_nmgy: tuple[float, float, float] = (0.025, 0.03, 0.045)  # g, r, i per 0.396" px
    field_galaxies_per_deg2: float = 2000.0
    field_stars_per_deg2: float = 600.0
    lupton_stretch: float = 0.5
    lupton_q: float = 8.0
    band_weights: tuple[float, float, float] = (2.0, 1.25, 1.0)  # g, r, i before Lupton
    jpeg_quality: int = 90


def tremonti_mmr(logm: np.ndarray) -> np.ndarray:
    """Tremonti et al. (2004) mass-metallicity relation, 12 + log(O/H)."""
    return -1.492 + 1.847 * logm - 0.08026 * logm**2


def sfms(logm: np.ndarray) -> np.ndarray:
    """Star-forming main sequence, log SFR [Msun/yr]."""
    return 0.77 * logm - 7.53


def mean_bulge_fraction(logm: np.ndarray) -> np.ndarray:
    """Mean r-band B/T of star-forming galaxies at fixed mass."""
    return np.clip(0.05 + 0.2 * (logm - 9.0), 0.02, 0.6)


def disk_size_kpc(logm: np.ndarray) -> np.ndarray:
    """Shen et al. (2003) late-type half-light radius [kpc]."""
    m = 10.0**logm
    return 0.1 * m**0.14 * (1 + m / 3.98e10) ** (0.39 - 0.14)


def bulge_size_kpc(logm_bulge: np.ndarray) -> np.ndarray:
    """Shen et al. (2003) early-type half-light radius [kpc]."""
    return 10.0 ** (0.56 * logm_bulge - 5.54)


def nmgy(mag: np.ndarray) -> np.ndarray:
    """Flux in nanomaggies of an AB magnitude (SDSS's unit)."""
    return 10.0 ** (-0.4 * (mag - 22.5))


def _mag(flux: np.ndarray) -> np.ndarray:
    return 22.5 - 2.5 * np.log10(flux)


def colour_offsets(gr: np.ndarray) -> dict[str, np.ndarray]:
    """Colour offsets of each band from r for a stellar population of colour g - r."""
    ri = 0.12 + 0.35 * gr
    return {
        "u": gr + 0.75 + 1.3 * gr,
        "g": gr,
        "r": 0.0 * gr,
        "i": -ri,
        "z": -ri - (0.02 + 0.3 * gr),
    }


def _by_mass(logm: np.ndarray, at_low: float, at_high: float) -> np.ndarray:
    """A value that runs linearly from ``at_low`` at log M <= 8.5 to ``at_high`` at >= 10.5."""
    return at_high + (at_low - at_high) * np.clip((10.5 - logm) / 2.0, 0.0, 1.0)


def _inverse_cdf_sampler(x: np.ndarray, pdf: np.ndarray):
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    return lambda u: np.interp(u, cdf, x)


def draw_population(n: int, seed: int, config: MockSkyConfig) -> Table:
    """Spectroscopic objects up to and including the ``n``-th that passes the sample cuts,
    one row each: SkyServer columns, then the latents (``true_*``). Deterministic in
    ``seed``; positions are uniform over ``FOOTPRINT``."""
    cfg = config
    rng = np.random.default_rng([seed, 1])
    zgrid = np.linspace(cfg.z_min, cfg.z_max, 512)
    draw_z = _inverse_cdf_sampler(zgrid, COSMOLOGY.differential_comoving_volume(zgrid).value)
    mgrid = np.linspace(cfg.logm_min, cfg.logm_max, 512)
    mu = 10.0 ** (mgrid - 10.66)  # Baldry et al. (2012) double Schechter, per dex
    phi = np.exp(-mu) * (3.96e-3 * mu ** (-0.35 + 1) + 0.79e-3 * mu ** (-1.47 + 1))
    draw_logm = _inverse_cdf_sampler(mgrid, phi)
    distances = (
        zgrid,
        COSMOLOGY.distmod(zgrid).value,
        COSMOLOGY.angular_diameter_distance(zgrid).value * 1e3,
    )  # kpc

    chunks, n_in_sample = [], 0
    while n_in_sample < n:
        batch = max(4000, 12 * (n - n_in_sample))
        z, logm = draw_z(rng.random(batch)), draw_logm(rng.random(batch))
        chunk = _draw_batch(rng, z, logm, cfg, distances)
        chunks.append(chunk)
        n_in_sample += int(mask(chunk).sum())
    pop = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    # Keep objects up to and including the n-th sample galaxy.
    last = np.flatnonzero(mask(pop))[n - 1]
    pop = {k: v[: last + 1] for k, v in pop.items()}
    m = last + 1
    pop["objID"] = _OBJID_BASE + np.cumsum(rng.integers(1, 2**24, m)).astype(np.int64)
    pop["specObjID"] = _SPECOBJID_BASE + np.cumsum(rng.integers(1, 2**30, m)).astype(np.int64)
    ra0, ra1, dec0, dec1 = FOOTPRINT
    pop["ra"] = rng.uniform(ra0, ra1, m)
    sd0, sd1 = np.sin(np.radians([dec0, dec1]))
    pop["dec"] = np.degrees(np.arcsin(rng.uniform(sd0, sd1, m)))
    pop["class"] = np.full(m, "GALAXY")
    first = ["objID", "specObjID", "ra", "dec", "z", "zErr", "rChi2", "class"]
    order = first + [c for c in CATALOG_COLUMNS if c not in first]
    order += sorted(k for k in pop if k.startswith("true_"))
    return Table({k: pop[k] for k in order})


def _draw_batch(
    rng: np.random.Generator,
    z: np.ndarray,
    x: np.ndarray,
    cfg: MockSkyConfig,
    distances: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict:
    """Latents and observables for a batch; rows fainter than the r limit are dropped.

    ``distances`` tabulates (z, distance modulus, angular diameter distance in kpc)."""
    n = len(z)
    zgrid, distmod, da_kpc = distances
    quenched = rng.random(n) < 1 / (1 + np.exp(-(x - cfg.quench_logm) / cfg.quench_width))
    sfr_scatter = _by_mass(x, cfg.sfms_scatter_low, cfg.sfms_scatter)
    logsfr = sfms(x) + rng.normal(0, 1, n) * sfr_scatter - 1.5 * quenched
    logsfr += quenched * rng.normal(0, 0.3, n)
    dsfr = logsfr - sfms(x)

    bt = np.where(
        quenched, rng.normal(0.6, 0.15, n), mean_bulge_fraction(x) + rng.normal(0, 0.1, n)
    )
    bt = np.clip(bt, 0.0, np.where(quenched, 1.0, 0.8))
    bt_offset = np.where(quenched, 0.0, bt - mean_bulge_fraction(x))
    n_bulge = np.round(2 * np.clip(2 + (x - 9.5) + rng.normal(0, 0.3, n), 1.5, 4.5)) / 2

    dlog_size = rng.normal(0, cfg.size_scatter, n)
    re_disk_kpc = disk_size_kpc(x) * 10**dlog_size
    logm_bulge = x + np.log10(np.maximum(bt, 0.02))
    re_bulge_kpc = bulge_size_kpc(logm_bulge) * 10 ** rng.normal(0, 0.1, n)
    da = np.interp(z, zgrid, da_kpc)
    arcsec_per_kpc = 206264.8 / da
    cos_i = rng.random(n)
    q_disk = np.sqrt(cos_i**2 * (1 - 0.15**2) + 0.15**2)
    q_bulge = rng.uniform(0.6, 1.0, n)
    pa = rng.uniform(0, 180, n)

    log_ssfr = logsfr - x
    gr_disk = np.clip(0.45 - 0.25 * (log_ssfr + 10) + rng.normal(0, 0.03, n), cfg.disk_gr_min, 0.8)
    gr_bulge = 0.72 + 0.04 * (x - 10.5) + rng.normal(0, 0.03, n)
    gr_total = -2.5 * np.log10(bt * 10 ** (-0.4 * gr_bulge) + (1 - bt) * 10 ** (-0.4 * gr_disk))
    log_ml = cfg.ml_intercept + cfg.ml_slope * gr_total
    abs_r = 4.65 - 2.5 * (x - log_ml)
    r_total = abs_r + np.interp(z, zgrid, distmod)
    # Dust in the disk: more for massive, inclined disks.
    a_r = 0.8 * np.clip((x - 8.5) / 2.0, 0.25, 1.0) * -np.log10(np.maximum(cos_i, 0.1))
    dust = {"u": 1.75 * a_r, "g": 1.35 * a_r, "r": a_r, "i": 0.78 * a_r, "z": 0.63 * a_r}
    with np.errstate(divide="ignore"):
        r_bulge = r_total - 2.5 * np.log10(bt)
        r_disk = r_total - 2.5 * np.log10(1 - bt) + a_r
    col_b, col_d = colour_offsets(gr_bulge), colour_offsets(gr_disk)
    out: dict[str, np.ndarray] = {}
    petro_flux = {}
    for b in BANDS:
        fb = nmgy(r_bulge + col_b[b])
        fd = nmgy(r_disk + col_d[b] - a_r + dust[b])
        out[f"true_flux_bulge_{b}"] = fb
        out[f"true_flux_disk_{b}"] = fd
        out[f"true_mag_{b}"] = _mag(fb + fd)
        # A Petrosian aperture holds ~99% of an exponential's light, ~82% of a de Vaucouleurs'.
        petro_flux[b] = 0.99 * fd + (0.99 - 0.17 * (n_bulge - 1) / 3) * fb

    # Measured photometry.
    for b in BANDS:
        mag = out[f"true_mag_{b}"]
        err = 0.004 + 0.03 * 10 ** (0.4 * (mag - 21.0))
        out[f"modelMagErr_{b}"] = err
        out[f"modelMag_{b}"] = mag + rng.normal(0, 1, n) * err
        pmag = _mag(petro_flux[b])
        perr = 1.3 * err
        out[f"petroMagErr_{b}"] = perr
        out[f"petroMag_{b}"] = pmag + rng.normal(0, 1, n) * perr
    # Failed u-band photometry (SDSS writes -9999): the magnitude cuts remove these.
    bad_u = rng.random(n) < 0.005
    out["modelMag_u"] = np.where(bad_u, MISSING, out["modelMag_u"])
    out["modelMagErr_u"] = np.where(bad_u, MISSING, out["modelMagErr_u"])
    # Sizes as SDSS measures them (seeing-broadened, light-weighted mix of components).
    re_disk = re_disk_kpc * arcsec_per_kpc
    re_bulge = re_bulge_kpc * arcsec_per_kpc
    r50 = np.sqrt((bt * re_bulge + (1 - bt) * re_disk) ** 2 + (0.5 * cfg.psf_fwhm) ** 2)
    out["petroR50_r"] = r50 * 10 ** rng.normal(0, 0.03, n)
    concentration = 2.3 + 0.8 * bt * (n_bulge / 4)
    out["petroR90_r"] = out["petroR50_r"] * concentration * 10 ** rng.normal(0, 0.03, n)

    # Metallicity: what the image can show, then what it cannot, then the measurement.
    oh_mean = (
        tremonti_mmr(x)
        + _by_mass(x, cfg.fmr_slope_low, cfg.fmr_slope) * dsfr
        + cfg.size_slope * dlog_size
        + cfg.bulge_slope * bt_offset
    )
    oh_true = oh_mean + rng.normal(0, cfg.oh_hidden_scatter, n)
    faintness = np.clip((out["petroMag_r"] - 14.5) / (cfg.r_limit - 14.5), 0, 1)
    oh_err = cfg.oh_error_bright + (cfg.oh_error_faint - cfg.oh_error_bright) * faintness
    oh_p50 = oh_true + rng.normal(0, 1, n) * oh_err
    # Emission-line class: quenched galaxies have no usable lines, AGN/composites
    # become common at high mass; neither has a metallicity in MPA-JHU.
    p_agn = 0.03 + cfg.agn_max / (1 + np.exp(-(x - cfg.agn_logm) / 0.3))
    agn = ~quenched & (rng.random(n) < p_agn)
    bpt = np.where(quenched, -1, np.where(agn, rng.choice([3, 4], n), 1))
    has_oh = bpt == 1
    out["oh_p50"] = np.where(has_oh, oh_p50, MISSING)
    out["oh_p16"] = np.where(has_oh, oh_p50 - oh_err * np.exp(rng.normal(0, 0.1, n)), MISSING)
    out["oh_p84"] = np.where(has_oh, oh_p50 + oh_err * np.exp(rng.normal(0, 0.1, n)), MISSING)
    out["lgm_tot_p50"] = x + rng.normal(0, 0.08, n)
    out["sfr_tot_p50"] = logsfr + rng.normal(0, np.where(quenched, 0.5, 0.2), n)
    out["bptclass"] = bpt.astype(np.int64)

    # Spectroscopic quality: a few bad redshifts and fits, as in any survey.
    out["z"] = z
    zerr = 10 ** rng.normal(-4.6, 0.3, n)
    bad_z = rng.random(n) < 0.01
    out["zErr"] = np.where(bad_z, rng.choice([-1.0, 0.0, 0.02], n), zerr)
    out["rChi2"] = np.where(
        rng.random(n) < 0.02, rng.uniform(2.0, 5.0, n), rng.uniform(0.7, 1.6, n)
    )

    latents = {
        "logm": x,
        "logsfr": logsfr,
        "dsfr": dsfr,
        "quenched": quenched,
        "bt": bt,
        "bt_offset": bt_offset,
        "n_bulge": n_bulge,
        "dlog_size": dlog_size,
        "re_disk_kpc": re_disk_kpc,
        "re_bulge_kpc": re_bulge_kpc,
        "re_disk": re_disk,
        "re_bulge": re_bulge,
        "cos_i": cos_i,
        "q_disk": q_disk,
        "q_bulge": q_bulge,
        "pa": pa,
        "gr_disk": gr_disk,
        "gr_bulge": gr_bulge,
        "a_r": a_r,
        "oh_mean": oh_mean,
        "oh": oh_true,
        "oh_err": oh_err,
    }
    out.update({f"true_{k}": v for k, v in latents.items()})
    keep = out["petroMag_r"] < cfg.r_limit
    return {k: v[keep] for k, v in out.items()}
