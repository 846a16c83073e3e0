"""The API keeps its own contract: schemathesis, as a generated client would, with every check.

The embedded service (in-process inference, SQLite, a small model, the mock SkyServer) is
driven in-process over ASGI by schemathesis' engine: examples, coverage, fuzzing and stateful
phases, over 1,000 generated cases, every check (``st run --checks all``). The only
exclusions, each with its reason, are ``tests.schemathesis_hooks.EXCLUSIONS``; the longer
bench run is ``bench/fuzz.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi

from galmet.app.api.routes.predict import _position
from galmet.app.core.config import Settings
from galmet.app.errors import ApiError
from galmet.app.main import create_app
from galmet.app.schemas import DEC_TEXT, RA_TEXT
from tests.helpers import service
from tests.schemathesis_hooks import (
    ACCEPTED,
    EXCLUSIONS,
    contract_config,
    contract_toml,
    run_contract,
)

#: Per operation and phase: about 1,040 cases in all (about 30 s in-process here).
MAX_EXAMPLES = 60
SEED = 13  # a fixed seed: CI is reproducible; bench/fuzz.py draws a new one each run


def test_every_operation_keeps_its_contract(tiny_model, mock_skyserver, tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/contract.sqlite3",
        model=tiny_model,
        skyserver_url=mock_skyserver,
        device="cpu",
        tta=1,
        cache_dir=tmp_path,
        max_upload_bytes=300_000,
        skyserver_retries=0,
        skyserver_timeout=2.0,
        skyserver_rate=0,  # the mock needs no politeness: no waits between fetches
    )
    app = create_app(settings)
    config = contract_config(MAX_EXAMPLES, seed=SEED)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    try:
        run = run_contract(schema)
    finally:
        asgi.shutdown_lifespans()  # the model, engine and database of this app go
    print(f"contract: {run.cases} cases, seed {run.seed}, {len(run.failures)} failures")
    assert not run.errors, run.errors
    assert run.failures == [], "\n".join(run.failures[:20])
    assert run.server_errors == 0
    assert run.cases >= 1000, run.cases
    paths = {op.split(" ", 1)[1] for op in run.operations if " " in op}
    assert {"/api/v1/predict", "/api/v1/predict/image", "/api/v1/jobs"} <= paths, paths


def test_the_schema_declares_one_error_body_and_real_constraints():
    """What a generated client reads: ErrorOut for every error status (FastAPI's 422 model
    never), the position forms, a non-empty job list and upload, UTC times."""
    spec = create_app(Settings(database_url="sqlite:///:memory:")).openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if path.endswith("/scs"):  # SCS requires its errors as VOTables
                    if int(status) >= 400:
                        assert list(response["content"]) == ["text/xml;content=x-votable"]
                elif int(status) >= 400 and not (path.endswith("/readyz") and status == "503"):
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorOut"}, (method, path)
    query = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/predict"]["get"]["parameters"]}
    assert query["ra"]["pattern"].startswith("^") and query["dec"]["pattern"].endswith("$")
    jobs = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    assert jobs["application/json"]["schema"]["minItems"] == 1
    assert "invalid" in jobs["application/json"]["schema"]["description"]
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert job["created_at"]["format"] == "date-time"


def test_the_cli_run_has_the_same_exclusions():
    """``st run URL/openapi.json`` from the repository reads schemathesis.toml: the same
    checks, relaxed the same way, on every operation as the test's own configuration."""
    path = Path(__file__).resolve().parents[1] / "schemathesis.toml"
    assert path.read_text() == contract_toml(), "regenerate it from contract_toml()"
    spec = create_app(Settings(database_url="sqlite:///:memory:")).openapi()
    from_file = schemathesis.openapi.from_dict(spec, config=SchemathesisConfig.from_path(path))
    from_test = schemathesis.openapi.from_dict(spec, config=contract_config(10))
    relaxed = 0
    for a, b in zip(from_file.get_all_operations(), from_test.get_all_operations(), strict=True):
        file_checks = from_file.config.checks_config_for(operation=a.ok())
        test_checks = from_test.config.checks_config_for(operation=b.ok())
        for name in ("positive_data_acceptance", "negative_data_rejection"):
            got, want = getattr(file_checks, name), getattr(test_checks, name)
            assert (got.enabled, got.expected_statuses) == (want.enabled, want.expected_statuses)
        relaxed += file_checks.positive_data_acceptance.expected_statuses != ACCEPTED
    assert relaxed == 7  # predict x2, cutout, upload, jobs, and the two cone search paths


def test_every_exclusion_says_why():
    assert all(len(e.reason) > 40 for e in EXCLUSIONS)
    # The only check turned off anywhere is the one the job design asks for.
    off = [(e.method, e.path, e.check) for e in EXCLUSIONS if e.statuses is None]
    assert off == [("POST", "/api/v1/jobs", "negative_data_rejection")]


def test_times_are_utc_with_an_offset_on_every_database(
    tiny_model, mock_skyserver, tmp_path, database_url
):
    """SQLite keeps no time zone and PostgreSQL keeps one: both answer RFC 3339 UTC."""
    with service(tiny_model, mock_skyserver, database_url, tmp_path) as api:
        r = httpx.post(f"{api}/api/v1/jobs", json=[{"ra": "bad", "dec": 0}], timeout=60)
        assert r.status_code == 202, r.text
        job = httpx.get(r.headers["Location"], timeout=60).json()
    for key in ("created_at", "finished_at"):  # every row invalid: finished at once
        stamp = datetime.fromisoformat(job[key])
        assert job[key].endswith(("Z", "+00:00")) and stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


@pytest.mark.parametrize(
    "ra, dec, want",
    [
        ("150.12345678901234", "-1e-05", (150.12345678901234, -1e-05)),  # a float's repr
        ("10:00:24", "+02:12:00", (150.1, 2.2)),
        ("10 00 24", "+02d12m00s", (150.1, 2.2)),
        ("359.999999999999", "-90", (359.999999999999, -90.0)),
        (150.5, -2, (150.5, -2.0)),  # JSON numbers
    ],
)
def test_the_documented_forms_are_taken(ra, dec, want):
    assert _position(ra, dec) == pytest.approx(want)
    for value, form in ((ra, RA_TEXT), (dec, DEC_TEXT)):
        assert isinstance(value, int | float) or form.fullmatch(value)


@pytest.mark.parametrize(
    "ra, dec, words",
    [
        ("1.5e2", "0", "not in a documented form"),  # astropy reads it; the schema does not
        (" 150", "0", "not in a documented form"),
        ("150", "2.2 ", "dec '2.2 ' is not in a documented form"),
        ("400", "0", "ra must be in [0, 360)"),  # the range keeps its own reason
        ("10", "-91", "dec must be in [-90, 90]"),
        ("", "0", "ra is empty"),
    ],
)
def test_other_forms_are_a_422_saying_why(ra, dec, words):
    with pytest.raises(ApiError) as refused:
        _position(ra, dec)
    assert refused.value.status == 422 and words in refused.value.detail
    assert not (RA_TEXT.fullmatch(ra) and DEC_TEXT.fullmatch(dec))
