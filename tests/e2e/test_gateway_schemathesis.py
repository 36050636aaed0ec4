"""A bounded property-based run of schemathesis against the gateway's own `/openapi.json`.

For every public operation of the gateway (the admin routes have their own
tests), generated requests — valid ones and deliberately invalid ones — must
never get a 5xx, and every answer must match the documented status codes,
content types, headers and schemas.
"""

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.gateway import running_gateway
from tests.support.infra import Infra

PUBLIC_PREFIXES = ("/v1/jobs", "/v1/files", "/v1/webhook-secret", "/healthz", "/readyz")
EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def run_schemathesis(spec: dict[str, Any], base_url: str, headers: dict[str, str]) -> list[str]:
    """Blocking: runs in a thread while the gateway serves in the test's event loop."""
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=base_url)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(PUBLIC_PREFIXES):
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=base_url, headers=headers, checks=CHECKS, timeout=10
                )

            try:
                check()
            except Unsatisfiable:
                # Negative mode has nothing to break in an operation with no inputs.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path
        tested.append(f"{operation.method.upper()} {operation.path}")
    return tested


async def test_generated_requests_get_no_5xx_and_only_documented_answers(infra: Infra) -> None:
    # A small upload limit, so generated file bodies also meet the 413 path.
    async with running_gateway(infra, max_upload_bytes=4096) as gw, gw.client() as http:
        spec = (await http.get("/openapi.json")).json()
        tested = await asyncio.to_thread(run_schemathesis, spec, gw.base_url, gw.headers())
    assert sorted(tested) == [
        "DELETE /v1/jobs/{job_id}",
        "GET /healthz",
        "GET /readyz",
        "GET /v1/files/{file_id}",
        "GET /v1/jobs",
        "GET /v1/jobs/{job_id}",
        "GET /v1/webhook-secret",
        "POST /v1/files",
        "POST /v1/jobs",
        "POST /v1/webhook-secret/rotate",
    ]
