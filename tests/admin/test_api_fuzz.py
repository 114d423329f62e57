"""Fuzz the JSON API from its own OpenAPI document (schemathesis): whatever
the parameters, no 5xx, and every answer matches the document."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.admin.conftest import Lake

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]


def test_api_never_answers_5xx_and_matches_its_openapi_document(lake: Lake) -> None:
    schema = schemathesis.openapi.from_url(lake.url + "/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {lake.tokens['alice']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
