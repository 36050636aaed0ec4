"""`/v1/admin/*`: queues, dead letters (browse, replay, purge), jobs across tenants, live events.

Auth: an admin key (`OFFLOAD_ADMIN_KEYS`) as `Authorization: Bearer <key>`.
No key, or a key Offload does not know: 401. A tenant's API key: 403 (it is
a valid identity without the right; the admin API's existence is documented,
so hiding it behind a 404 would protect nothing).

The routes parse and call `AdminService`; its refusals become problems in `on_refused`.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from offload_contracts.admin import (
    AdminJobDetail,
    AdminJobsView,
    AuditEntry,
    DeadLetterPageView,
    PurgeView,
    QueuesView,
    ReplayRequest,
    ReplayView,
)
from offload_gateway.admin.dead_letters import actor_of
from offload_gateway.admin.service import (
    AdminRefused,
    AdminService,
    BrokerUnavailable,
    Invalid,
    NotFound,
    TooManyActions,
    Unconfirmed,
)
from offload_gateway.deps import deps_of, unauthorized
from offload_gateway.problems import ProblemError, problem_response, problem_responses
from offload_runtime import stream_cursor
from offload_runtime.auth import bearer_token

_bearer = HTTPBearer(auto_error=False, description="An admin key: `Authorization: Bearer <key>`.")

_REFUSALS: dict[type[AdminRefused], int] = {
    NotFound: 404,
    Invalid: 422,
    Unconfirmed: 400,
    TooManyActions: 429,
    BrokerUnavailable: 503,
}


async def _service(request: Request) -> AdminService:
    service: AdminService = request.app.state.admin
    return service


async def _actor(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's actor name if it holds an admin key; 401 or 403 otherwise."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise unauthorized("send an admin key as `Authorization: Bearer <key>`")
    key_ring = deps_of(request).key_ring
    if key_ring.is_admin(token):
        return actor_of(token)
    if key_ring.tenant_for(token) is not None:
        raise ProblemError(
            403, "this API key belongs to a tenant; the admin API needs an admin key"
        )
    raise unauthorized("the API key is not valid")


Admin = Annotated[AdminService, Depends(_service)]
Actor = Annotated[str, Depends(_actor)]


async def on_refused(request: Request, exc: Exception) -> Response:
    """`AdminService`'s refusals as problem details (installed on the app for `AdminRefused`)."""
    assert isinstance(exc, AdminRefused)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return problem_response(
        _REFUSALS[type(exc)], exc.message, instance=request.url.path, headers=headers
    )


router = APIRouter(prefix="/v1/admin", tags=["admin"])

# ---------------------------------------------------------------------- queues


@router.get(
    "/queues",
    response_model=QueuesView,
    summary="Queues: ready, unacked, consumers, dead letters",
    responses=problem_responses(401, 503),
)
async def list_queues(admin: Admin, _actor: Actor) -> QueuesView:
    """Every work, retry and dead queue of every service, by passive declare.

    `unacked` comes from the consuming workers' reports (about a second old):
    0 for a queue without consumers, null where consumers do not report.
    """
    return await admin.queues()


# ---------------------------------------------------------------------- dead letters


@router.get(
    "/dead-letters/{queue}",
    response_model=DeadLetterPageView,
    summary="Read a dead queue (without consuming it)",
    responses=problem_responses(401, 404, 422, 503),
)
async def browse(
    queue: str,
    admin: Admin,
    _actor: Actor,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> DeadLetterPageView:
    """A page of parked messages, oldest failure first. Nothing is consumed.

    The whole queue (up to `OFFLOAD_ADMIN_SCAN_LIMIT` letters) is read and
    put back in order on every call, so pages are stable; each read adds
    one to every letter's `browsed` count.
    """
    return await admin.browse(queue, offset=offset, limit=limit)


@router.post(
    "/dead-letters/{queue}/replay",
    response_model=ReplayView,
    summary="Replay dead letters (all, or by job id)",
    responses=problem_responses(401, 404, 422, 429, 503),
)
async def replay(queue: str, body: ReplayRequest, admin: Admin, actor: Actor) -> ReplayView:
    """Put failed jobs back to `waiting` (attempts reset) and publish them again as attempt 1.

    Each dead letter is acked only after its job is recorded `waiting` and
    the new message is confirmed by the broker; letters that cannot be
    replayed stay in the queue and are listed in `skipped` with the reason.

    In `notifier.dead` (webhook deliveries) each delivery goes back to the
    notifier's work queue as attempt 1, with the same event and `webhook-id`;
    the job itself is not touched.
    """
    return await admin.replay(queue, body, actor)


@router.delete(
    "/dead-letters/{queue}",
    response_model=PurgeView,
    summary="Purge a dead queue (with confirmation)",
    responses=problem_responses(400, 401, 404, 429, 503),
)
async def purge(
    queue: str,
    admin: Admin,
    actor: Actor,
    confirm: Annotated[
        str | None, Query(description="Must repeat the queue's name, e.g. `image.dead`.")
    ] = None,
) -> PurgeView:
    """Delete every message of a dead queue for good. `?confirm=<queue>` is required."""
    return await admin.purge(queue, confirm, actor)


@router.get(
    "/audit",
    response_model=list[AuditEntry],
    summary="Who replayed or purged what, newest first",
    responses=problem_responses(401),
)
async def read_audit(
    admin: Admin, _actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[AuditEntry]:
    return await admin.audit(limit)


# ---------------------------------------------------------------------- jobs


@router.get(
    "/jobs",
    response_model=AdminJobsView,
    summary="The newest jobs of every tenant",
    responses=problem_responses(401),
)
async def list_jobs(
    admin: Admin, _actor: Actor, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> AdminJobsView:
    """The newest `limit` jobs of every tenant that has an API key, with counts by status."""
    return await admin.recent_jobs(limit)


@router.get(
    "/jobs/{job_id}",
    response_model=AdminJobDetail,
    summary="A job of any tenant, with its event timeline",
    responses=problem_responses(401, 404),
)
async def job_detail(job_id: str, admin: Admin, _actor: Actor) -> AdminJobDetail:
    return await admin.job(job_id)


# ---------------------------------------------------------------------- live events


@router.get(
    "/events",
    response_class=EventSourceResponse,
    summary="Live job events of every tenant (SSE)",
    responses=problem_responses(401),
)
async def live_events(
    request: Request,
    admin: Admin,
    _actor: Actor,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    snapshot: Annotated[int, Query(ge=0, le=500)] = 100,
) -> AsyncIterator[ServerSentEvent]:
    """Every job event as it is recorded, read from the event outbox.

    Without `Last-Event-ID`, the stream starts with one `snapshot` event
    (the newest `snapshot` jobs and their counts, as `GET /v1/admin/jobs`)
    taken after the stream's position was fixed, so no later event is
    missed and none older than the snapshot follows it. Then one `job`
    event per transition, `id:` being the position in every shard's outbox
    (`offload_runtime.stream_cursor`).
    """
    positions = _resume_point(last_event_id, deps_of(request).keys.shards)
    events = admin.live_events(positions, snapshot, request.is_disconnected)
    async for event in events:
        yield ServerSentEvent(raw_data=event.data, event=event.kind, id=event.id)


def _resume_point(last_event_id: str | None, shards: int) -> dict[int, str] | None:
    """The outbox positions to resume after; None (start afresh) for an id not handed out."""
    if not last_event_id:
        return None
    try:
        return stream_cursor.decode(last_event_id, shards)
    except ValueError:
        return None
