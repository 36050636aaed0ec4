"""Each HTTP service's `/openapi.json` is a valid OpenAPI document, as an SDK generator
reads it (checked with openapi-spec-validator, against the version the document names)."""

import json
from typing import Any

import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from offload_gateway.app import build_app as build_gateway
from offload_notifier.app import build_app as build_notifier
from offload_sandbox.app import build_app as build_sandbox

SERVICES = {"gateway": build_gateway, "notifier": build_notifier, "sandbox": build_sandbox}


def served(app: FastAPI) -> dict[str, Any]:
    """The document as `/openapi.json` sends it (JSON: status codes become strings)."""
    document: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return document


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_openapi_document_is_valid(service: str) -> None:
    document = served(SERVICES[service]())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises, naming the first offending place


def test_the_admin_event_stream_keeps_its_item_schema_as_an_extension() -> None:
    events = served(build_gateway())["paths"]["/v1/admin/events"]["get"]["responses"]["200"]
    media = events["content"]["text/event-stream"]
    assert media["schema"] == {"type": "string"}
    assert set(media["x-itemSchema"]["properties"]) >= {"data", "event", "id"}
