"""Property-based requests generated from /openapi.json (schemathesis): no server errors.

A bounded number of cases per operation, against the real service over loopback.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import service

CASES_PER_OPERATION = 25


def test_no_server_errors(tiny_model, mock_skyserver, tmp_path):
    with service(tiny_model, mock_skyserver, f"sqlite:///{tmp_path}/st.sqlite3", tmp_path) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=CASES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def no_server_error(case):
                case.call_and_validate(checks=[not_a_server_error], timeout=60)

            no_server_error()
