"""`/v1/jobs`: submit, read, list and cancel jobs."""

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from offload_contracts import JobStatus, TraceContext
from offload_contracts.api import FieldProblem, JobPage, JobView, SubmissionBase
from offload_contracts.catalog import JobCatalog
from offload_gateway import metrics
from offload_gateway.deps import Deps, Tenant, TenantAuth, current_tenant, deps_of
from offload_gateway.problems import ProblemError, field_problems, problem_responses
from offload_gateway.submission import (
    BrokerUnavailable,
    IdempotencyConflict,
    NotDurable,
    QueueFull,
    RateLimited,
    SubmitJob,
    SubmitRefused,
)
from offload_gateway.views import job_links, job_path, job_view
from offload_runtime.echo import quoted
from offload_runtime.listing import InvalidCursor
from offload_runtime.store import JobRecord, new_id, utcnow
from offload_runtime.url_guard import UnsafeURL, check_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def submission_examples(catalog: JobCatalog) -> dict[str, Any]:
    """One OpenAPI example of `POST /v1/jobs` per job type, from its spec."""
    return {
        spec.type: {
            "summary": f"{spec.type}: {spec.example_summary or spec.summary}",
            "value": spec.example,
        }
        for spec in catalog.specs.values()
    }


_JSON = "application/json"
_TYPE_FILTER = "Only jobs of this type."
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
WEBHOOK_RESOLVE_TIMEOUT_S = 5.0
_REFUSALS: dict[type[SubmitRefused], tuple[int, str]] = {
    RateLimited: (429, "rate_limited"),
    QueueFull: (429, "queue_full"),
    BrokerUnavailable: (503, "unavailable"),
    NotDurable: (503, "unavailable"),
    IdempotencyConflict: (409, "conflict"),
}


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != _JSON and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ProblemError(415, "send the job as JSON with `Content-Type: application/json`")


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise _invalid(
            ["header", "Idempotency-Key"],
            "must be 1 to 255 printable ASCII characters without spaces",
            "string_pattern_mismatch",
        )
    return key


async def _read_submission(request: Request, catalog: JobCatalog) -> SubmissionBase:
    body = await request.body()
    try:
        submission: SubmissionBase = catalog.submission_adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise ProblemError(
                400, "the request body is not valid JSON", title="Malformed JSON"
            ) from None
        problems = field_problems(_job_type_named(e, catalog) for e in errors)
        summary = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:3])
        raise ProblemError(
            422, f"the request is invalid: {summary}", title="Invalid request", errors=problems
        ) from None
    return submission


def _job_type_named(error: Any, catalog: JobCatalog) -> dict[str, Any]:
    """A body error at its place in the request; a bad `type` said in words.

    The submission is a union tagged by `type`, and pydantic reports an unknown or a
    missing tag against the whole body (an empty `loc`), in terms of its discriminator.
    """
    if error["loc"]:
        return {**error, "loc": ("body", *error["loc"])}
    known = ", ".join(catalog.types)
    if error["type"] == "union_tag_invalid":
        tag = quoted(str(error.get("ctx", {}).get("tag", "")))
        msg = f"unknown job type {tag}; known types: {known}"
        return {"loc": ("body", "type"), "msg": msg, "type": "unknown_job_type"}
    if error["type"] == "union_tag_not_found":
        msg = f"the job type is missing; known types: {known}"
        return {"loc": ("body", "type"), "msg": msg, "type": "missing"}
    return {**error, "loc": ("body",)}


def _invalid(loc: list[str | int], msg: str, kind: str) -> ProblemError:
    return ProblemError(
        422,
        f"the request is invalid: {'.'.join(map(str, loc))}: {msg}",
        title="Invalid request",
        errors=[_field(loc, msg, kind)],
    )


def add_submission_schema(openapi: dict[str, Any], catalog: JobCatalog) -> None:
    """Put `JobSubmission` (the body of `POST /v1/jobs`) into the document's components,
    with an example per job type, and the job types into the list's `type` filter."""
    schema = catalog.submission_adapter.json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["JobSubmission"] = schema
    jobs = openapi["paths"][router.prefix]
    body = jobs["post"]["requestBody"]["content"][_JSON]
    body["examples"] = submission_examples(catalog)
    for parameter in jobs["get"]["parameters"]:
        if parameter["name"] == "type":
            parameter["schema"] = {
                "anyOf": [catalog.type_adapter.json_schema(), {"type": "null"}],
                "description": _TYPE_FILTER,
                "title": "Type",
            }


def _known_type(catalog: JobCatalog, job_type: str) -> None:
    """The `type` filter names one of the gateway's job types, or the list is refused (422)."""
    try:
        catalog.type_adapter.validate_python(job_type)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("query", "type")} for error in exc.errors(include_url=False)]
        ) from None


def _own_job(record: JobRecord | None, tenant: str, job_id: str) -> JobRecord:
    # Another tenant's job is reported exactly like a missing one (404, not 403).
    if record is None or record.tenant != tenant:
        raise ProblemError(404, f"no job {quoted(job_id)}")
    return record


def _json(
    view: JobView | JobPage, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # Serialized once by pydantic; FastAPI's response_model pass would validate it again.
    return Response(view.model_dump_json(), status_code=status, media_type=_JSON, headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    summary="Submit a job",
    # The hot path reads and validates its own body (pydantic's `validate_json`
    # straight from bytes) instead of FastAPI's parameter machinery, which cost
    # more than the Redis write; the OpenAPI entries below document the same.
    openapi_extra={
        "security": [{TenantAuth.__name__: []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Same key and body within 24 h → the same job; same key with "
                "another body → 409.",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": _IDEMPOTENCY_KEY.pattern,
                },
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {
                    "schema": {"$ref": "#/components/schemas/JobSubmission"},
                    # One per job type, filled in by `add_submission_schema`.
                    "examples": {},
                }
            },
        },
    },
    responses={
        200: {
            "description": "A replay: an earlier request with the same `Idempotency-Key` and "
            "body made this job (header `Idempotent-Replayed: true`).",
            "model": JobView,
        },
        202: {
            "description": "Accepted: the job is recorded and queued; `Location` is its URL.",
            "headers": {"Location": {"description": "The job.", "schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
    },
)
async def submit_job(request: Request) -> Response:
    """Validate the input against the type's contract, record the job, publish it, answer 202.

    Answers 503 (with `Retry-After`) when the broker is unreachable, and 429 when the
    tenant's rate or the type's queue-depth limit is passed.
    """
    deps = deps_of(request)
    tenant = current_tenant.authenticate(request)
    _require_json(request)
    idempotency_key = _idempotency_key(request)
    submission = await _read_submission(request, deps.catalog)
    if submission.webhook is not None:
        await _check_webhook_url(deps, submission.webhook.url)
    traceparent = request.headers.get("traceparent")
    command = SubmitJob(
        tenant=tenant,
        submission=submission,
        job_id=new_id(),
        now=utcnow(),
        idempotency_key=idempotency_key,
        trace=TraceContext(traceparent=traceparent[:256]) if traceparent else None,
    )
    try:
        submitted = await deps.submitter.submit(command)
    except SubmitRefused as exc:
        status, outcome = _REFUSALS.get(type(exc), (503, "unavailable"))
        metrics.SUBMISSIONS.labels(submission.type, outcome).inc()
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise ProblemError(status, exc.message, headers=headers) from exc
    location = job_path(submitted.job_id)
    if submitted.request is None:
        metrics.SUBMISSIONS.labels(submission.type, "replayed").inc()
        record = _own_job(await deps.store.get(submitted.job_id), tenant, submitted.job_id)
        return _json(
            job_view(record, deps.settings.notifier_base_url),
            200,
            {"Location": location, "Idempotent-Replayed": "true"},
        )
    metrics.SUBMISSIONS.labels(submission.type, "accepted").inc()
    view = JobView(
        id=submitted.job_id,
        type=submission.type,
        status=JobStatus.WAITING,
        attempt=0,
        max_attempts=submitted.request.max_attempts,
        created_at=command.now,
        links=job_links(submitted.job_id, deps.settings.notifier_base_url),
    )
    return _json(view, 202, {"Location": location})


async def _check_webhook_url(deps: Deps, url: str) -> None:
    try:
        async with asyncio.timeout(WEBHOOK_RESOLVE_TIMEOUT_S):
            await check_url(url, allow_private=deps.settings.webhook_allow_private)
    except UnsafeURL as exc:
        reason = str(exc)
    except ValueError as exc:  # e.g. a host name IDNA cannot encode
        reason = f"URL is malformed ({exc})"
    except TimeoutError:
        reason = "the host did not resolve in time"
    else:
        return
    raise ProblemError(
        422,
        f"webhook.url is refused: {reason}",
        title="Invalid request",
        errors=[_field(["body", "webhook", "url"], reason, "unsafe_url")],
    )


def _field(loc: list[str | int], msg: str, kind: str) -> FieldProblem:
    return FieldProblem(loc=loc, msg=msg, type=kind)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="Read a job",
    responses=problem_responses(401, 404, 422),
)
async def get_job(job_id: str, deps: Deps, tenant: Tenant) -> Response:
    """The job's status, progress, result or error, and links."""
    record = _own_job(await deps.store.get(job_id), tenant, job_id)
    return _json(job_view(record, deps.settings.notifier_base_url))


@router.get(
    "",
    response_model=JobPage,
    summary="List jobs",
    responses=problem_responses(401, 422),
)
async def list_jobs(
    deps: Deps,
    tenant: Tenant,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    job_type: Annotated[str | None, Query(alias="type", description=_TYPE_FILTER)] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the previous page."),
    ] = None,
) -> Response:
    """The tenant's jobs, newest first, a page at a time."""
    if job_type is not None:
        _known_type(deps.catalog, job_type)
    try:
        page = await deps.listing.list_jobs(
            tenant, limit=limit, cursor=cursor, status=status, job_type=job_type
        )
    except InvalidCursor as exc:
        raise ProblemError(
            422,
            f"cursor: {exc}",
            title="Invalid request",
            errors=[_field(["query", "cursor"], str(exc), "invalid_cursor")],
        ) from exc
    notifier_url = deps.settings.notifier_base_url
    items = [job_view(job, notifier_url) for job in page.jobs]
    return _json(JobPage(items=items, next_cursor=page.next_cursor))


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a job",
    responses=problem_responses(401, 404, 409, 422),
)
async def cancel_job(job_id: str, deps: Deps, tenant: Tenant) -> Response:
    """Cancel: a waiting or delayed job never runs; an active job's worker is told to stop.

    409 if the job has already finished.
    """
    record = _own_job(await deps.store.get(job_id), tenant, job_id)
    outcome = await deps.store.cancel(record)
    if not outcome.applied:
        raise ProblemError(
            409,
            f"job {quoted(job_id)} is already {outcome.previous_status}; it cannot be cancelled",
        )
    record = _own_job(await deps.store.get(job_id), tenant, job_id)
    return _json(job_view(record, deps.settings.notifier_base_url))
