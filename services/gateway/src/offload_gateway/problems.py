"""RFC 9457 problem details for every error the gateway answers.

Routes raise `ProblemError`; the handlers below also turn FastAPI's validation
errors and Starlette's HTTP errors (404 for unknown paths, 405 with `Allow`)
into `application/problem+json`, so a client parses one error shape everywhere.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from offload_contracts.api import PROBLEM_MEDIA_TYPE, FieldProblem, Problem
from offload_runtime.echo import clipped, quoted
from offload_runtime.logging import get_logger
from offload_runtime.outage import NotReplicated

log = get_logger("offload.gateway")


class ProblemError(Exception):
    """An error answer: status, a `detail` the client can act on, and extra headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldProblem] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[FieldProblem] | None = None,
) -> Response:
    problem = Problem(
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=clipped(instance) if instance is not None else None,
        errors=list(errors) if errors is not None else None,
    )
    return Response(
        problem.model_dump_json(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def field_problems(errors: Iterable[Mapping[str, Any]]) -> list[FieldProblem]:
    """Pydantic/FastAPI error dicts → field problems (without echoing the input back)."""
    return [
        FieldProblem(
            loc=[part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            msg=str(error.get("msg", "invalid")),
            type=str(error.get("type", "value_error")),
        )
        for error in errors
    ]


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.detail,
        title=exc.title,
        instance=request.url.path,
        headers=exc.headers,
        errors=exc.errors,
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem_response(
            400,
            "the request body is not valid JSON",
            title="Malformed JSON",
            instance=request.url.path,
        )
    problems = field_problems(errors)
    summary = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:3])
    return problem_response(
        422,
        f"the request is invalid: {summary}" if summary else "the request is invalid",
        title="Invalid request",
        instance=request.url.path,
        errors=problems,
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"no such resource: {quoted(request.url.path)}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {quoted(request.url.path)}"
    return problem_response(
        exc.status_code, detail, instance=request.url.path, headers=exc.headers or {}
    )


async def _on_redis_unavailable(request: Request, exc: Exception) -> Response:
    # Redis holds every job's state: without it the gateway can neither accept
    # nor read a job. That is an outage to wait out, not a bug: 503, not 500.
    log.warning("redis unreachable", path=request.url.path, error=str(exc))
    deps = getattr(request.app.state, "deps", None)
    retry_after = deps.settings.unavailable_retry_after_s if deps is not None else 5
    return problem_response(
        503,
        "job state storage is unreachable; nothing was changed, try again shortly",
        instance=request.url.path,
        headers={"Retry-After": str(retry_after)},
    )


async def _on_not_replicated(request: Request, exc: Exception) -> Response:
    # OFFLOAD_REDIS_WAIT_REPLICAS: the change is on the master, not yet confirmed on its
    # replicas; the client should not take it as done.
    log.warning("redis replicas did not confirm a change in time", path=request.url.path)
    deps = getattr(request.app.state, "deps", None)
    retry_after = deps.settings.unavailable_retry_after_s if deps is not None else 5
    return problem_response(
        503,
        "job state storage did not confirm the change on its replicas in time; read the "
        "job to see whether it took effect, and try again shortly",
        instance=request.url.path,
        headers={"Retry-After": str(retry_after)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return problem_response(
        500, "an unexpected error occurred; it has been logged", instance=request.url.path
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RedisConnectionError, _on_redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, _on_redis_unavailable)
    # A Redis Cluster that lost a master: its slots are down (or moving) until a replica
    # takes over, a matter of seconds.
    for cluster_failure in (ClusterError, TryAgainError, RedisClusterException):
        app.add_exception_handler(cluster_failure, _on_redis_unavailable)
    app.add_exception_handler(NotReplicated, _on_not_replicated)
    app.add_exception_handler(Exception, _on_unexpected)


PROBLEM_REF = "#/components/schemas/Problem"


def add_problem_schemas(openapi: dict[str, Any]) -> None:
    """Put `Problem` (and what it refers to) into an OpenAPI document's components."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["Problem"] = schema


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error statuses (problem+json)."""
    described = {
        400: "Malformed request (e.g. JSON that does not parse).",
        401: "Missing or unknown API key.",
        404: "No such resource for this tenant.",
        409: "Conflicts with the resource's state or an earlier request.",
        413: "The body is larger than the configured limit.",
        415: "Unsupported `Content-Type`.",
        416: "The requested range is outside the file.",
        422: "The request is invalid; `errors` lists the fields.",
        429: "Rate or queue-depth limit passed; retry after `Retry-After` seconds.",
        503: "The broker is unreachable; retry after `Retry-After` seconds.",
    }
    with_retry_after = {429, 503}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": described[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
        }
        if status in with_retry_after:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}
            }
        responses[status] = entry
    return responses
