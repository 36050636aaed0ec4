"""The notifier's HTTP API: SSE streams (DESIGN §2), health and metrics.

Errors are RFC 9457 problem details. Another tenant's job is a 404, exactly
as a job that does not exist.
"""

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from offload_notifier import metrics
from offload_notifier.streams import (
    Frame,
    JobSnapshots,
    StreamEntry,
    StreamSlots,
    StreamSource,
    job_frames,
)
from offload_notifier.tenant_stream import tenant_frames
from offload_runtime import stream_cursor
from offload_runtime.auth import KeyRing, bearer_token
from offload_runtime.echo import clipped, quoted
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import get_logger
from offload_runtime.stream_ids import canonical

log = get_logger("offload.notifier.routes")

PROBLEM_JSON = "application/problem+json"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Problem(Exception):
    """An error answer: `status`, a short `title`, and a `detail` the caller can act on."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(request: Request, problem: Problem, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": clipped(request.url.path),
        **extra,
    }
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def install_problem_handlers(
    app: FastAPI, *, unavailable: tuple[type[Exception], ...] = ()
) -> None:
    """Every error answer as problem+json; `unavailable` errors (a dependency down) as 503."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        return problem_response(request, Problem(exc.status_code, title, str(exc.detail)))

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        problem = Problem(422, "Invalid request", "the request has invalid fields")
        return problem_response(request, problem, errors=errors)

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        problem = Problem(
            503,
            "Service Unavailable",
            "job state is unreachable right now; retry shortly",
            {"Retry-After": "1"},
        )
        return problem_response(request, problem)

    for error in unavailable:
        app.add_exception_handler(error, on_unavailable)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)


@dataclass(frozen=True)
class RouteDeps:
    """What the routes need, wired by `app.py`."""

    key_ring: KeyRing
    keys: RedisKeys
    streams: StreamSource
    snapshots: JobSnapshots
    tenant_of_job: Callable[[str], Awaitable[str | None]]
    ping_s: float
    readiness: Callable[[], Awaitable[dict[str, bool]]]
    slots: StreamSlots


STREAM_RETRY_AFTER_S = 5
"""`Retry-After` of a 429 for a tenant at its stream limit: a slot frees when one of its
streams closes, which nothing here can predict."""


_SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."},
    401: {"content": {PROBLEM_JSON: {}}, "description": "No valid API key."},
    404: {"content": {PROBLEM_JSON: {}}, "description": "No such job for this tenant."},
    429: {
        "content": {PROBLEM_JSON: {}},
        "description": "The tenant already holds its limit of open streams on this process "
        "(`OFFLOAD_SSE_MAX_STREAMS_PER_TENANT`); `Retry-After` says when to try again.",
    },
}


class EventStream(EventSourceResponse):
    """An SSE response written straight from the session's frames.

    FastAPI's generator endpoints (`response_class=EventSourceResponse` with
    `yield`) pass every event through two memory streams and a keep-alive task;
    with a thousand clients receiving the same event, that per-client cost is
    the fan-out's whole budget. Here each event costs one `send`, its bytes are
    encoded once per stream entry for all clients, and the session sends its
    own pings. The session generator is always closed when the response ends,
    so its subscription is released even when the client vanished mid-send.
    """

    def __init__(
        self,
        kind: str,
        frames: AsyncGenerator[Frame | StreamEntry, None],
        release: Callable[[], None],
    ) -> None:
        self._kind = kind
        self._frames = frames
        self._release = release
        super().__init__(
            _encoded(kind, frames),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        metrics.SSE_CLIENTS.labels(self._kind).inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            metrics.SSE_CLIENTS.labels(self._kind).dec()
            self._release()
            await self._frames.aclose()


async def _encoded(
    kind: str, frames: AsyncGenerator[Frame | StreamEntry, None]
) -> AsyncIterator[bytes]:
    try:
        async for frame in frames:
            if isinstance(frame, StreamEntry):
                if frame.wire is None:
                    frame.wire = format_sse_event(
                        data_str=frame.public_data, event=frame.kind or None, id=frame.id
                    )
                yield frame.wire
            else:
                yield format_sse_event(
                    data_str=frame.data, event=frame.event, id=frame.id, comment=frame.comment
                )
    except Exception:
        # The 200 is sent: an error can no longer become a problem answer, and
        # raised further it would only reach the server as "Exception in ASGI
        # application" on a connection left open. End the stream instead; the
        # client resumes with Last-Event-ID (a job stream's end is its terminal event).
        log.warning("event stream ended by an error", stream=kind, exc_info=True)


def build_router(deps: RouteDeps) -> APIRouter:
    router = APIRouter()

    # Dependencies are `async def`: a plain `def` would run in a worker thread.
    async def tenant(authorization: Annotated[str | None, Header()] = None) -> str:
        token = bearer_token(authorization)
        found = deps.key_ring.tenant_for(token) if token else None
        if found is None:
            detail = (
                "send an API key as `Authorization: Bearer <key>`"
                if token is None
                else "the API key is not valid"
            )
            raise Problem(401, "Unauthorized", detail, {"WWW-Authenticate": "Bearer"})
        return found

    async def last_event_id(
        header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        query: Annotated[str | None, Query(alias="last_event_id")] = None,
    ) -> str | None:
        # Browsers send the header on reconnection; the query parameter lets a first
        # connection resume too (EventSource cannot set headers).
        value = header if header is not None else query
        if value is None or not value.strip():
            return None
        try:
            return canonical(value)
        except ValueError:
            raise Problem(
                400,
                "Invalid Last-Event-ID",
                "Last-Event-ID must be the `id:` of an event this stream sent, "
                "e.g. `1700000000000-0` (two whole numbers below 2^64)",
            ) from None

    def stream_for(
        tenant: str, kind: str, frames: AsyncGenerator[Frame | StreamEntry, None]
    ) -> EventStream:
        """The response for `frames`, holding one of the tenant's stream slots until it ends."""
        if not deps.slots.take(tenant):
            metrics.SSE_REFUSED.inc()
            raise Problem(
                429,
                "Too Many Streams",
                f"this API key's tenant already has {deps.slots.limit} event streams open "
                "here; close one, or follow all the tenant's jobs on one `GET /v1/events`",
                {"Retry-After": str(STREAM_RETRY_AFTER_S)},
            )
        return EventStream(kind, frames, lambda: deps.slots.give_back(tenant))

    async def owned_job(job_id: str, tenant: Annotated[str, Depends(tenant)]) -> str:
        if not _JOB_ID.match(job_id) or await deps.tenant_of_job(job_id) != tenant:
            raise Problem(404, "Not Found", f"no job {quoted(job_id)}")
        return job_id

    @router.get(
        "/v1/jobs/{job_id}/events",
        response_class=StreamingResponse,  # not EventSourceResponse: see EventStream
        responses=_SSE_RESPONSES,
        summary="A job's events as Server-Sent Events",
        description="History first, then live; `id:` is the event's stream id and "
        "`Last-Event-ID` resumes after it. A `resync` event (the job's current state) "
        "comes first when events since that id were trimmed. `: ping` every 15 s; the "
        "stream ends after the job's terminal event.",
    )
    async def job_events(
        tenant: Annotated[str, Depends(tenant)],
        job_id: Annotated[str, Depends(owned_job)],
        resume_after: Annotated[str | None, Depends(last_event_id)],
    ) -> EventStream:
        frames = job_frames(
            job_id,
            deps.keys.job_events(job_id),
            resume_after,
            source=deps.streams,
            snapshots=deps.snapshots,
            ping_s=deps.ping_s,
        )
        return stream_for(tenant, "job", frames)

    async def tenant_resume_point(
        header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        query: Annotated[str | None, Query(alias="last_event_id")] = None,
    ) -> dict[int, str] | None:
        value = header if header is not None else query
        if value is None or not value.strip():
            return None
        try:
            return stream_cursor.decode(value, deps.keys.shards)
        except ValueError as exc:
            with contextlib.suppress(ValueError):
                canonical(value)
                # One stream's id, as this stream gave out before it was sharded: no
                # position is known, so the stream resyncs rather than refuse.
                return {}
            raise Problem(
                400,
                "Invalid Last-Event-ID",
                "Last-Event-ID must be the `id:` of an event this stream sent: a position in "
                "each shard, `<shard>.<ms>-<seq>` items joined by `_` (whole numbers below 2^64), "
                f"e.g. `3.1700000000000-0_11.1700000000042-1` ({exc})",
            ) from None

    @router.get(
        "/v1/events",
        response_class=StreamingResponse,  # not EventSourceResponse: see EventStream
        responses=_SSE_RESPONSES,
        summary="All the tenant's job events as Server-Sent Events",
        description="Live from the moment of connection (a `: subscribed` comment marks it), "
        "or resumed after `Last-Event-ID`. The tenant's events are kept per shard; each `id:` "
        "is the client's position in every shard, so a resume has no gap and no duplicate.",
    )
    async def tenant_events(
        tenant: Annotated[str, Depends(tenant)],
        resume_after: Annotated[dict[int, str] | None, Depends(tenant_resume_point)],
    ) -> EventStream:
        keys = [deps.keys.tenant_events(tenant, shard) for shard in deps.keys.all_shards]
        frames = tenant_frames(keys, resume_after, source=deps.streams, ping_s=deps.ping_s)
        return stream_for(tenant, "tenant", frames)

    @router.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: RabbitMQ and Redis reachable, relay running, webhooks consumed",
    )
    async def readyz() -> JSONResponse:
        try:
            checks = await asyncio.wait_for(deps.readiness(), 3)
        except TimeoutError:
            checks = {"broker": False, "redis": False}
        ready = all(checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
