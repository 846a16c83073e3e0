"""galmet: gas-phase metallicity of galaxies from SDSS gri images (Wu & Boada 2019)."""

__version__ = "0.1.0"
