"""Sky coordinates from what people type: decimal degrees or sexagesimal strings.

Parsing is astropy's (``Angle``); RA given as ``hh:mm:ss`` or with an ``h`` is in hours.
Every failure is a ``ValueError`` with a one-line reason, which the API returns as a 422.
"""

from __future__ import annotations

import math

import astropy.units as u
from astropy.coordinates import Angle


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
            unit = u.hourangle if hours and (sexagesimal or "h" in text) else u.deg
            try:
                degrees = Angle(text, unit=unit).degree
            except Exception:  # astropy raises several types for unparsable angles
                raise ValueError(f"cannot read {name} {value!r} as an angle") from None
    if not math.isfinite(degrees):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(degrees)


def parse_ra(value: float | int | str, label: str = "ra") -> float:
    """Right ascension in degrees, in [0, 360); strings may be sexagesimal hours."""
    ra = _angle(value, label, hours=True)
    if not 0.0 <= ra < 360.0:
        raise ValueError(f"{label} must be in [0, 360) degrees, got {ra:g}")
    return ra


def parse_dec(value: float | int | str, label: str = "dec") -> float:
    """Declination in degrees, in [-90, 90]; strings may be sexagesimal degrees."""
    dec = _angle(value, label, hours=False)
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"{label} must be in [-90, 90] degrees, got {dec:g}")
    return dec


def parse_coordinates(ra: float | int | str, dec: float | int | str) -> tuple[float, float]:
    """(ra, dec) in decimal degrees, checked: RA in [0, 360), Dec in [-90, 90]."""
    return parse_ra(ra), parse_dec(dec)
