"""galmet's API held to its own OpenAPI schema by schemathesis, as a generated client would.

Shared by the CI test (``tests/test_contract.py``) and the bench run (``bench/fuzz.py``):
every phase (examples, coverage, fuzzing, stateful) and every check of schemathesis
(``st run --checks all``) on every operation, except the exclusions below, each with its
reason. Nothing else is excluded: a new failure is a defect of the service or of its schema.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status
from schemathesis.engine.events import FatalError, NonFatalError, ScenarioFinished

#: The statuses ``positive_data_acceptance`` takes from a request the schema allows
#: (schemathesis' own list).
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


@dataclass(frozen=True)
class Exclusion:
    """One check relaxed on one operation: ``statuses`` widens what it accepts; None turns
    it off there."""

    method: str
    path: str
    check: str
    statuses: tuple[str, ...] | None
    reason: str


EXCLUSIONS = [
    *(
        Exclusion(
            method,
            path,
            "positive_data_acceptance",
            ("422",),
            "a well-formed position may hold nothing to measure: a blank (off-footprint) "
            "SDSS cutout or no galaxy there. That is the sky's answer, not the request's shape, "
            "so no schema can rule it out; the 422 is declared and its flags say which.",
        )
        for method, path in (
            ("GET", "/api/v1/predict"),
            ("POST", "/api/v1/predict"),
            ("GET", "/api/v1/cutout"),
        )
    ),
    Exclusion(
        "POST",
        "/api/v1/predict/image",
        "positive_data_acceptance",
        ("413", "415", "422"),
        "whether the bytes of an upload are a readable JPEG or PNG, not blank and not too many "
        "pixels, is known only by decoding them: the schema says 'binary', the declared "
        "413/415/422 say why not.",
    ),
    Exclusion(
        "POST",
        "/api/v1/jobs",
        "positive_data_acceptance",
        ("400", "413", "415", "422"),
        "whether an uploaded file or CSV body is a readable table with ra and dec columns is "
        "known only by reading it (UTF-8, its columns, its format): the declared 400/413/415/"
        "422 say why not.",
    ),
    *(
        Exclusion(
            "GET",
            path,
            "positive_data_acceptance",
            ("400",),
            "the cone search's largest SR is a setting of the service (GALMET_SCS_MAX_SR), "
            "stated in every answer's metadata, not a constant of the schema; a cone over it "
            "is refused as SCS requires, with a 400 error VOTable that says the cap.",
        )
        for path in ("/api/v1/scs", "/scs")
    ),
    Exclusion(
        "POST",
        "/api/v1/jobs",
        "negative_data_rejection",
        None,
        "row-by-row validation is the design: a job whose rows break the target schema is "
        "accepted (202) and each bad row is reported invalid, with its reason, in the results "
        "(the schema says so), so that one bad line never loses a 100,000-row job.",
    ),
]


def contract_config(max_examples: int, seed: int | None = None) -> SchemathesisConfig:
    """Every check on, ``max_examples`` per operation and phase, and the exclusions."""
    operations = []
    for e in EXCLUSIONS:
        check = {"enabled": False} if e.statuses is None else {}
        if e.statuses is not None:
            check["expected-statuses"] = [*ACCEPTED, *e.statuses]
        # By name ("POST /api/v1/jobs"): include-method and include-path would match either.
        operations.append({"include-name": f"{e.method} {e.path}", "checks": {e.check: check}})
    config = {
        "generation": {"max-examples": max_examples},
        "request-timeout": 60,
        "operations": _merged(operations),
    }
    if seed is not None:
        config["seed"] = seed
    return SchemathesisConfig.from_dict(config)


def contract_toml() -> str:
    """``schemathesis.toml`` at the repository root: the exclusions for a plain
    ``st run http://…/openapi.json`` (the CLI finds the file), reasons as comments."""
    lines = [
        "# galmet's API against its own schema: st run http://127.0.0.1:8000/openapi.json",
        "# (every check is on by default; --checks all would switch the exclusions back on).",
        "# Written by tests/schemathesis_hooks.py (contract_toml) from its EXCLUSIONS;",
        "# tests/test_contract.py keeps the two the same.",
    ]
    # One table per operation: with two, the engine would take only the first for some phases.
    names = list(dict.fromkeys(f"{e.method} {e.path}" for e in EXCLUSIONS))
    for name in names:
        relaxed = [e for e in EXCLUSIONS if f"{e.method} {e.path}" == name]
        lines.append("")
        for e in relaxed:
            lines += [f"# {line}" for line in textwrap.wrap(f"{e.check}: {e.reason}", 94)]
        lines += ["[[operations]]", f'include-name = "{name}"']
        for e in relaxed:
            if e.statuses is None:
                lines.append(f"checks.{e.check}.enabled = false")
            else:
                statuses = ", ".join(f'"{s}"' for s in (*ACCEPTED, *e.statuses))
                lines.append(f"checks.{e.check}.expected-statuses = [{statuses}]")
    return "\n".join(lines) + "\n"


def _merged(operations: list[dict]) -> list[dict]:
    """One entry per operation (schemathesis applies the first that matches)."""
    by_key: dict[str, dict] = {}
    for op in operations:
        key = op["include-name"]
        if key in by_key:
            by_key[key]["checks"].update(op["checks"])
        else:
            by_key[key] = {**op, "checks": dict(op["checks"])}
    return list(by_key.values())


@dataclass
class ContractRun:
    """What a run found: cases sent, and each failure or error as one readable line."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_errors: int = 0  # responses with a 5xx status
    operations: set[str] = field(default_factory=set)
    seed: int | None = None


def run_contract(schema: schemathesis.schemas.BaseSchema) -> ContractRun:
    """Run every phase of schemathesis' engine over ``schema`` and gather what it found."""
    run = ContractRun(seed=schema.config.seed)
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, ScenarioFinished) and event.is_test_scenario:
            recorder = event.recorder
            run.cases += len(recorder.cases)
            if event.status != Status.SKIP and event.label:
                run.operations.add(event.label)
            for interaction in recorder.interactions.values():
                if interaction.response is not None and interaction.response.status_code >= 500:
                    run.server_errors += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        info = check.failure_info
                        run.failures.append(
                            f"{event.phase.name} {event.label}: {check.name}: "
                            f"{info.failure.title}: {info.code_sample}"
                        )
        elif isinstance(event, NonFatalError | FatalError):
            run.errors.append(f"{type(event).__name__}: {getattr(event, 'value', event)!r}")
    return run
