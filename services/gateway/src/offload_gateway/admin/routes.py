"""`/v1/admin/*`: queues, dead letters (browse, replay, purge), jobs across tenants, live events.

Auth: an admin key (`OFFLOAD_ADMIN_KEYS`) as `Authorization: Bearer <key>`.
No key, or a key Offload does not know: 401. A tenant's API key: 403 (it is
a valid identity without the right; the admin API's existence is documented,
so hiding it behind a 404 would protect nothing).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent

from offload_contracts import JobEvent, topology
from offload_contracts.admin import (
    AdminJobDetail,
    AdminJobsView,
    AdminJobView,
    AuditEntry,
    DeadLetterPageView,
    DeadLetterView,
    PurgeView,
    QueuesView,
    QueueView,
    ReplayRequest,
    ReplayView,
    SkippedView,
    TimelineEntry,
)
from offload_gateway.admin.dead_letters import Replayer, WebhookReplayer, actor_of
from offload_gateway.admin.settings import AdminSettings
from offload_gateway.deps import GatewayDeps
from offload_gateway.problems import ProblemError, problem_responses
from offload_runtime import metrics, stream_cursor
from offload_runtime.broker import publish_confirmed
from offload_runtime.echo import quoted
from offload_runtime.inflight import read_unacked
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop
from offload_runtime.queues import UNACKED_NOTE, QueueMissing, QueueOps, QueueRef, service_queues
from offload_runtime.redis import xread_streams
from offload_runtime.store import JobRecord, utcnow

log = get_logger("offload.admin")

_bearer = HTTPBearer(auto_error=False, description="An admin key: `Authorization: Bearer <key>`.")


@dataclass
class Operations:
    """What the admin routes work with; one per gateway app."""

    deps: GatewayDeps
    settings: AdminSettings
    queues: QueueOps
    services: tuple[str, ...]

    @property
    def refs(self) -> list[QueueRef]:
        return service_queues(self.services, self.deps.settings.tiers)

    @property
    def dead_queues(self) -> set[str]:
        return {topology.dead_queue(service) for service in self.services}

    async def refresh_gauges(self) -> QueuesView:
        stats = await self.queues.stats(self.refs)
        consumed = [stat.queue.name for stat in stats if stat.exists and stat.consumers]
        reported = await read_unacked(self.deps.redis, self.deps.keys, consumed)
        views = []
        for stat in stats:
            ref = stat.queue
            # Without consumers nothing is in flight; with them, what they report.
            unacked = reported.get(ref.name) if stat.consumers else (0 if stat.exists else None)
            stalled = ref.kind == "work" and bool(stat.ready) and not stat.consumers
            if ref.kind == "work":
                metrics.QUEUE_STALLED.labels(ref.name, ref.service).set(1 if stalled else 0)
            if stat.exists:
                metrics.QUEUE_MESSAGES.labels(ref.name, ref.service, ref.kind).set(stat.ready or 0)
                metrics.QUEUE_CONSUMERS.labels(ref.name, ref.service, ref.kind).set(
                    stat.consumers or 0
                )
                if unacked is not None:
                    metrics.QUEUE_UNACKED.labels(ref.name, ref.service, ref.kind).set(unacked)
            views.append(
                QueueView(
                    name=ref.name,
                    service=ref.service,
                    kind=ref.kind,
                    tier=ref.tier,
                    exists=stat.exists,
                    ready=stat.ready,
                    consumers=stat.consumers,
                    stalled=stalled,
                    unacked=unacked,
                )
            )
        dead = sum(view.ready or 0 for view in views if view.kind == "dead")
        return QueuesView(
            queues=views, dead_letters=dead, unacked_note=UNACKED_NOTE, read_at=utcnow()
        )

    def gauge_refresher(self) -> BackgroundLoop:
        """Keeps the `offload_queue_*` gauges fresh between scrapes."""
        return BackgroundLoop(
            "admin queue stats", self.refresh_gauges, self.settings.queue_refresh_s
        )


def build_router(ops: Operations) -> APIRouter:
    """The `/v1/admin` routes, bound to one gateway's parts."""
    deps = ops.deps
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    def admin(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        """The caller's actor name if it holds an admin key; 401 or 403 otherwise."""
        header = request.headers.get("authorization")
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ProblemError(
                401,
                "send an admin key as `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if deps.key_ring.is_admin(token):
            return actor_of(token)
        if deps.key_ring.tenant_for(token) is not None:
            raise ProblemError(
                403, "this API key belongs to a tenant; the admin API needs an admin key"
            )
        raise ProblemError(401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})

    Actor = Annotated[str, Depends(admin)]

    def dead_queue(queue: str) -> str:
        if queue not in ops.dead_queues:
            known = ", ".join(sorted(ops.dead_queues))
            raise ProblemError(404, f"no dead-letter queue named {quoted(queue)} (known: {known})")
        return queue

    async def rate_limit(actor: str) -> None:
        """At most `admin_replay_per_minute` replay/purge calls per admin key per minute."""
        window = int(time.time() // 60)
        key = deps.keys.admin_rate(actor, window)
        async with deps.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        if int(count) > ops.settings.admin_replay_per_minute:
            retry_after = max(1, 60 - int(time.time() % 60))
            raise ProblemError(
                429,
                f"at most {ops.settings.admin_replay_per_minute} replay or purge calls a minute "
                f"per admin key; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    async def audit(actor: str, action: str, queue: str, detail: dict[str, Any]) -> str:
        entry_id = await deps.redis.xadd(
            deps.keys.admin_audit,
            {
                "at": utcnow().isoformat(),
                "actor": actor,
                "action": action,
                "queue": queue,
                "detail": json.dumps(detail),
            },
            maxlen=ops.settings.admin_audit_maxlen,
            approximate=True,
        )
        log.info("admin action", actor=actor, action=action, queue=queue, **detail)
        return str(entry_id)

    async def publish(body: bytes, routing_key: str, job_id: str) -> None:
        async with asyncio.timeout(deps.settings.publish_timeout_s):
            await publish_confirmed(
                deps.broker.broker,
                body,
                exchange=topology.JOBS_EXCHANGE,
                routing_key=routing_key,
                message_id=job_id,
            )

    async def publish_delivery(body: bytes, webhook_id: str) -> None:
        # Straight to the notifier's work queue (default exchange), as the notifier
        # itself schedules a delivery; unroutable (no notifier ever declared it) raises.
        async with asyncio.timeout(deps.settings.publish_timeout_s):
            await publish_confirmed(
                deps.broker.broker,
                body,
                routing_key=topology.work_queue(topology.NOTIFIER_SERVICE),
                message_id=webhook_id,
            )

    def broker_required() -> None:
        if not deps.broker.connected:
            raise ProblemError(
                503,
                "the broker is unreachable; nothing was changed",
                headers={"Retry-After": str(deps.settings.unavailable_retry_after_s)},
            )

    # ------------------------------------------------------------------ queues

    @router.get(
        "/queues",
        response_model=QueuesView,
        summary="Queues: ready, unacked, consumers, dead letters",
        responses=problem_responses(401, 503),
    )
    async def list_queues(_actor: Actor) -> QueuesView:
        """Every work, retry and dead queue of every service, by passive declare.

        `unacked` comes from the consuming workers' reports (about a second old):
        0 for a queue without consumers, null where consumers do not report.
        """
        try:
            return await ops.refresh_gauges()
        except Exception as exc:
            raise ProblemError(
                503,
                f"the broker did not answer: {exc!r}",
                headers={"Retry-After": str(deps.settings.unavailable_retry_after_s)},
            ) from exc

    # ------------------------------------------------------------------ dead letters

    @router.get(
        "/dead-letters/{queue}",
        response_model=DeadLetterPageView,
        summary="Read a dead queue (without consuming it)",
        responses=problem_responses(401, 404, 422, 503),
    )
    async def browse(
        queue: str,
        _actor: Actor,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> DeadLetterPageView:
        """A page of parked messages, oldest failure first. Nothing is consumed.

        The whole queue (up to `OFFLOAD_ADMIN_SCAN_LIMIT` letters) is read and
        put back in order on every call, so pages are stable; each read adds
        one to every letter's `browsed` count.
        """
        dead_queue(queue)
        if limit > ops.settings.admin_browse_limit:
            raise ProblemError(422, f"limit must be at most {ops.settings.admin_browse_limit}")
        try:
            page = await ops.queues.browse(
                queue, offset=offset, limit=limit, scan_limit=ops.settings.admin_scan_limit
            )
        except QueueMissing as exc:
            raise ProblemError(404, f"{queue} is not declared on the broker") from exc
        return DeadLetterPageView(
            queue=queue,
            total=page.total,
            offset=offset,
            limit=limit,
            next_offset=page.next_offset,
            scanned=page.scanned,
            items=[
                DeadLetterView.model_validate(item, from_attributes=True) for item in page.items
            ],
        )

    @router.post(
        "/dead-letters/{queue}/replay",
        response_model=ReplayView,
        summary="Replay dead letters (all, or by job id)",
        responses=problem_responses(401, 404, 422, 429, 503),
    )
    async def replay(queue: str, body: ReplayRequest, actor: Actor) -> ReplayView:
        """Put failed jobs back to `waiting` (attempts reset) and publish them again as attempt 1.

        Each dead letter is acked only after its job is recorded `waiting` and
        the new message is confirmed by the broker; letters that cannot be
        replayed stay in the queue and are listed in `skipped` with the reason.

        In `notifier.dead` (webhook deliveries) each delivery goes back to the
        notifier's work queue as attempt 1, with the same event and `webhook-id`;
        the job itself is not touched.
        """
        dead_queue(queue)
        if bool(body.job_ids) == body.all:
            raise ProblemError(422, 'send either "job_ids": [...] or "all": true')
        await rate_limit(actor)
        broker_required()
        wanted_ids = set(body.job_ids or ())
        seen: set[str] = set()

        def wanted(letter: Any) -> bool:
            if body.all:
                return True
            if letter.job_id in wanted_ids:
                seen.add(letter.job_id)
                return True
            return False

        webhooks = queue == topology.dead_queue(topology.NOTIFIER_SERVICE)
        replayer: Replayer | WebhookReplayer = (
            WebhookReplayer(publish_delivery) if webhooks else Replayer(deps.store, publish)
        )
        batch = ops.settings.admin_replay_batch
        error: Exception | None = None
        scanned = remaining = 0
        try:
            report = await ops.queues.sweep(
                queue,
                replayer.decide,
                scan_limit=batch if body.all else ops.settings.admin_scan_limit,
                act_limit=batch,
                wanted=wanted,
            )
            scanned, remaining = report.scanned, report.remaining
        except QueueMissing as exc:
            raise ProblemError(404, f"{queue} is not declared on the broker") from exc
        except Exception as exc:
            error = exc
        webhook_ids = replayer.webhook_ids if isinstance(replayer, WebhookReplayer) else None
        metrics.DEAD_LETTERS_REPLAYED.labels(queue).inc(
            len(replayer.replayed) if webhook_ids is None else len(webhook_ids)
        )
        detail: dict[str, Any] = {
            "requested": "all" if body.all else sorted(wanted_ids)[:1000],
            "replayed": replayer.replayed[:1000],
            "replayed_count": len(replayer.replayed),
            "skipped_count": len(replayer.skipped),
            "error": repr(error) if error else None,
        }
        if webhook_ids is not None:
            detail["webhook_ids"] = webhook_ids[:1000]
        audit_id = await audit(actor, "replay", queue, detail)
        if error is not None:
            raise ProblemError(
                503,
                f"replay stopped: {error!r}; {len(replayer.replayed)} job(s) were replayed "
                "before it, the rest stay in the queue; call again to finish",
                headers={"Retry-After": str(deps.settings.unavailable_retry_after_s)},
            )
        return ReplayView(
            queue=queue,
            replayed=replayer.replayed,
            skipped=[SkippedView(job_id=j, reason=r) for j, r in replayer.skipped],
            not_found=sorted(wanted_ids - seen),
            scanned=scanned,
            remaining=remaining,
            audit_id=audit_id,
            webhook_ids=webhook_ids,
        )

    @router.delete(
        "/dead-letters/{queue}",
        response_model=PurgeView,
        summary="Purge a dead queue (with confirmation)",
        responses=problem_responses(400, 401, 404, 429, 503),
    )
    async def purge(
        queue: str,
        actor: Actor,
        confirm: Annotated[
            str | None, Query(description="Must repeat the queue's name, e.g. `image.dead`.")
        ] = None,
    ) -> PurgeView:
        """Delete every message of a dead queue for good. `?confirm=<queue>` is required."""
        dead_queue(queue)
        if confirm != queue:
            raise ProblemError(
                400,
                f"purging deletes every message for good: repeat the queue's name, "
                f"`?confirm={queue}`",
            )
        await rate_limit(actor)
        try:
            purged = await ops.queues.purge(queue)
        except QueueMissing as exc:
            raise ProblemError(404, f"{queue} is not declared on the broker") from exc
        metrics.DEAD_LETTERS_PURGED.labels(queue).inc(purged)
        audit_id = await audit(actor, "purge", queue, {"purged": purged})
        return PurgeView(queue=queue, purged=purged, audit_id=audit_id)

    @router.get(
        "/audit",
        response_model=list[AuditEntry],
        summary="Who replayed or purged what, newest first",
        responses=problem_responses(401),
    )
    async def read_audit(
        _actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[AuditEntry]:
        entries: Any = await deps.redis.xrevrange(deps.keys.admin_audit, count=limit)
        return [
            AuditEntry(
                id=entry_id,
                at=fields.get("at", ""),
                actor=fields.get("actor", ""),
                action=fields.get("action", ""),
                queue=fields.get("queue", ""),
                detail=json.loads(fields.get("detail") or "{}"),
            )
            for entry_id, fields in entries
        ]

    # ------------------------------------------------------------------ jobs

    async def recent_jobs(limit: int) -> AdminJobsView:
        tenants = sorted(set(deps.key_ring.tenants_by_key.values()))
        pages = await asyncio.gather(
            *(deps.listing.list_jobs(tenant, limit=limit) for tenant in tenants)
        )
        newest = sorted(
            (job for page in pages for job in page.jobs),
            key=lambda job: (job.created_at, job.id),
            reverse=True,
        )[:limit]
        jobs = [_admin_job(job) for job in newest]
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
        return AdminJobsView(jobs=jobs, counts=counts, tenants=tenants)

    @router.get(
        "/jobs",
        response_model=AdminJobsView,
        summary="The newest jobs of every tenant",
        responses=problem_responses(401),
    )
    async def list_jobs(
        _actor: Actor, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> AdminJobsView:
        """The newest `limit` jobs of every tenant that has an API key, with counts by status."""
        return await recent_jobs(limit)

    @router.get(
        "/jobs/{job_id}",
        response_model=AdminJobDetail,
        summary="A job of any tenant, with its event timeline",
        responses=problem_responses(401, 404),
    )
    async def job_detail(job_id: str, _actor: Actor) -> AdminJobDetail:
        record = await deps.store.get(job_id) if _valid_id(job_id) else None
        if record is None:
            raise ProblemError(404, f"no job {quoted(job_id)} (it may have expired)")
        entries = await deps.store.events(job_id)
        return AdminJobDetail(
            job=_admin_job(record),
            input=record.input,
            events=[
                TimelineEntry(stream_id=entry_id, event=JobEvent.model_validate_json(data))
                for entry_id, data in entries
            ],
        )

    # ------------------------------------------------------------------ live events

    @router.get(
        "/events",
        response_class=EventSourceResponse,
        summary="Live job events of every tenant (SSE)",
        responses=problem_responses(401),
    )
    async def live_events(
        request: Request,
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
        shard_of_key = {deps.keys.outbox(shard): shard for shard in deps.keys.all_shards}
        positions = _resume_point(last_event_id, deps.keys.shards)
        if positions is None:
            newest = await asyncio.gather(
                *(deps.redis.xrevrange(key, count=1) for key in shard_of_key)
            )
            positions = {
                shard: str(last[0][0]) if last else "0-0"
                for shard, last in zip(shard_of_key.values(), newest, strict=True)
            }
            view = await recent_jobs(snapshot) if snapshot else None
            if view is not None:
                yield ServerSentEvent(raw_data=view.model_dump_json(), event="snapshot")
        while not await request.is_disconnected():
            # Short blocks: a closed stream is noticed within a second, so shutdown never
            # waits on a reader parked in Redis.
            batches = await xread_streams(
                deps.redis,
                {key: positions[shard] for key, shard in shard_of_key.items()},
                count=200,
                block_ms=1000,
            )
            for key, entries in batches:
                for entry_id, fields in entries:
                    positions[shard_of_key[key]] = entry_id
                    yield ServerSentEvent(
                        raw_data=fields["data"], event="job", id=stream_cursor.encode(positions)
                    )

    return router


def _admin_job(record: JobRecord) -> AdminJobView:
    return AdminJobView.model_validate(record.model_dump(include=set(AdminJobView.model_fields)))


def _valid_id(job_id: str) -> bool:
    return 0 < len(job_id) <= 64 and all(c.isalnum() or c in "_-" for c in job_id)


def _resume_point(last_event_id: str | None, shards: int) -> dict[int, str] | None:
    """The outbox positions to resume after; None (start afresh) for an id not handed out."""
    if not last_event_id:
        return None
    try:
        return stream_cursor.decode(last_event_id, shards)
    except ValueError:
        return None
