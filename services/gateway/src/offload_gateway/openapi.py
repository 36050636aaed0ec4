"""The gateway's OpenAPI document: FastAPI's, plus what FastAPI leaves out or gets wrong."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from offload_gateway.problems import add_problem_schemas
from offload_gateway.routes import jobs


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document served at `/openapi.json`: valid OpenAPI 3.1, with every schema named."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    add_problem_schemas(document)
    jobs.add_submission_schema(document, app.state.deps.catalog)
    _streams_as_openapi_31(document)
    return document


def _streams_as_openapi_31(document: dict[str, Any]) -> None:
    """FastAPI describes an SSE (or JSON Lines) response with `itemSchema`, a field of
    OpenAPI 3.2, in a document that says 3.1.0: validators refuse it, and SDK generators
    may. In 3.1 such a body is a string; the schema of one item stays, as the extension
    `x-itemSchema`, for the readers that know it.
    """
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    if "itemSchema" in media:
                        media["x-itemSchema"] = media.pop("itemSchema")
                        media.setdefault("schema", {"type": "string"})
