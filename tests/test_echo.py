"""A prediction by position echoes the position asked for, and reports apart the position
it was made at (a cached answer's, or the SDSS object's), over HTTP, sexagesimal included."""

from __future__ import annotations

import httpx
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from tests.helpers import galaxy, service

API = "/api/v1"


def sexagesimal(ra: float, dec: float) -> tuple[str, str]:
    c = SkyCoord(ra * u.deg, dec * u.deg)
    return (
        c.ra.to_string(unit=u.hourangle, sep=":", precision=5, pad=True),
        c.dec.to_string(unit=u.deg, sep=":", precision=4, alwayssign=True, pad=True),
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_cache_hit_echoes_the_position_asked_for(
    tiny_model, mock_sky, mock_skyserver, database_url, tmp_path
):
    ra, dec = galaxy(mock_sky, 7)
    near = (ra, dec + 0.3 / 3600)  # 0.3″ north: the same cached answer
    with service(tiny_model, mock_skyserver, database_url, tmp_path, identify=False) as api:
        first = httpx.get(f"{api}{API}/predict", params={"ra": ra, "dec": dec}, timeout=60)
        assert first.status_code == 200, first.text
        text_ra, text_dec = sexagesimal(*near)
        r = httpx.get(f"{api}{API}/predict", params={"ra": text_ra, "dec": text_dec}, timeout=60)
        assert r.status_code == 200, r.text
    p = r.json()
    assert p["cached"] is True and p["oh_p50"] == first.json()["oh_p50"]
    # The position sent, not the cached entry's: 0.3″ apart, both reported.
    assert (p["ra"], p["dec"]) == pytest.approx(near, abs=1e-7)
    assert (p["matched_ra"], p["matched_dec"]) == pytest.approx((ra, dec), abs=1e-9)
    assert p["dec"] - p["matched_dec"] == pytest.approx(0.3 / 3600, abs=1e-7)
    assert (first.json()["matched_ra"], first.json()["matched_dec"]) == (ra, dec)
