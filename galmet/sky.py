"""Sky positions: parsed from what people type, range-checked, and compared.

Parsing is astropy's (``Angle``): decimal degrees or sexagesimal strings; RA given as
``hh:mm:ss`` or with an ``h`` is in hours. Every failure is a ``ValueError`` with a one-line
reason, which the API returns as a 422 and the command line prints as one line. Positions are
ICRS degrees: RA in [0, 360), Dec in [-90, 90], checked here and nowhere else.
"""

from __future__ import annotations

import math

import numpy as np


def _angle(value: float | int | str, name: str, hours: bool) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or an angle string")
    if isinstance(value, int | float):
        degrees = float(value)
    else:
        text = value.strip()
        if not text:
            raise ValueError(f"{name} is empty")
        try:
            degrees = float(text)
        except ValueError:
            sexagesimal = ":" in text or " " in text
            unit = "hourangle" if hours and (sexagesimal or "h" in text) else "deg"
            try:
                degrees = _astropy_angle(text, unit)
            except Exception:  # astropy raises several types for unparsable angles
                raise ValueError(f"cannot read {name} {value!r} as an angle") from None
    if not math.isfinite(degrees):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(degrees)


def _astropy_angle(text: str, unit: str) -> float:
    # Imported here: decimal degrees (every machine-made table) need no astropy, and the
    # core must import on a bare GPU machine without it.
    from astropy.coordinates import Angle

    return float(Angle(text, unit=unit).degree)


def parse_ra(value: float | int | str, label: str = "ra") -> float:
    """Right ascension in degrees, in [0, 360); strings may be sexagesimal hours."""
    ra = _angle(value, label, hours=True)
    check_ra(ra, label)
    return ra


def parse_dec(value: float | int | str, label: str = "dec") -> float:
    """Declination in degrees, in [-90, 90]; strings may be sexagesimal degrees."""
    dec = _angle(value, label, hours=False)
    check_dec(dec, label)
    return dec


def parse_coordinates(ra: float | int | str, dec: float | int | str) -> tuple[float, float]:
    """(ra, dec) in decimal degrees, checked: RA in [0, 360), Dec in [-90, 90]."""
    return parse_ra(ra), parse_dec(dec)


def check_ra(ra: float, label: str = "ra") -> None:
    """Raise ``ValueError`` unless ``ra`` is finite and in [0, 360) degrees."""
    if not math.isfinite(ra):
        raise ValueError(f"{label} must be finite, got {ra!r}")
    if not 0.0 <= ra < 360.0:
        raise ValueError(f"{label} must be in [0, 360) degrees, got {ra:g}")


def check_dec(dec: float, label: str = "dec") -> None:
    """Raise ``ValueError`` unless ``dec`` is finite and in [-90, 90] degrees."""
    if not math.isfinite(dec):
        raise ValueError(f"{label} must be finite, got {dec!r}")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"{label} must be in [-90, 90] degrees, got {dec:g}")


def check_position(ra: float, dec: float) -> None:
    """Raise ``ValueError`` unless (ra, dec) is a sky position in degrees (see the module)."""
    check_ra(ra)
    check_dec(dec)


def is_position(ra: float, dec: float) -> bool:
    """Whether (ra, dec) passes ``check_position``."""
    try:
        check_position(ra, dec)
    except (ValueError, TypeError):
        return False
    return True


def separation_arcsec(ra1, dec1, ra2, dec2):
    """Angular separation in arcseconds of positions in degrees (scalars or arrays).

    astropy's ``angular_separation`` (Vincenty's formula: exact at every separation).
    """
    from astropy.coordinates import angular_separation

    radians = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    sep = np.degrees(angular_separation(*radians)) * 3600.0
    return float(sep) if np.ndim(sep) == 0 else sep
