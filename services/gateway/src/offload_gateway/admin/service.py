"""Operating Offload: queues, dead letters, every tenant's jobs, live events, the audit.

What `/v1/admin/*` does, as one class over ports (`AdminService`); the routes
only parse, call it and turn its refusals into problem answers. This module
imports no broker, Redis or web framework: `amqp.py` (queues and dead letters
on the gateway's AMQP connection) and `redis_ports.py` implement the ports.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from offload_contracts import topology
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
from offload_gateway.admin.dead_letters import JobLedger, Replayer, WebhookReplayer
from offload_gateway.admin.queues import (
    UNACKED_NOTE,
    DeadLetter,
    DeadLetterPage,
    HeldMessage,
    QueueMissing,
    QueueRef,
    QueueStats,
    SweepReport,
    TakeDecision,
    service_queues,
)
from offload_gateway.admin.settings import AdminSettings
from offload_runtime import metrics, stream_cursor
from offload_runtime.echo import quoted
from offload_runtime.logging import get_logger
from offload_runtime.settings import RetryTier
from offload_runtime.store import JobRecord, utcnow

log = get_logger("offload.admin")

_UNREACHABLE = "the broker is unreachable; nothing was changed"

# --------------------------------------------------------------------------- outcomes

# Shaped like the submit path's refusals (`submission.SubmitRefused`): each route
# answers a class with its status (`routes._REFUSALS`), the message as the detail.


class AdminRefused(Exception):
    """The call was refused and changed nothing (unless its message says what it did)."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class NotFound(AdminRefused):
    """No such dead queue, queue on the broker, or job."""


class Invalid(AdminRefused):
    """The request's values do not go together or pass a limit."""


class Unconfirmed(AdminRefused):
    """A purge without `?confirm=<queue>`."""


class TooManyActions(AdminRefused):
    """The admin key passed its replay-and-purge calls per minute."""


class BrokerUnavailable(AdminRefused):
    """The broker is unreachable, or stopped answering mid-way."""


# --------------------------------------------------------------------------- ports


class QueueStatsReader(Protocol):
    async def stats(self, refs: Sequence[QueueRef]) -> list[QueueStats]:
        """Ready and consumer counts of each queue, read now."""
        ...


class DeadLetterQueues(Protocol):
    """Dead queues read without being consumed, swept by a callback, purged.

    `amqp.AmqpQueues` implements it; the signatures (and the types they import
    from `queues.py`) stand in both places on purpose, as a port's do.
    """

    async def browse(
        self, queue: str, *, offset: int, limit: int, scan_limit: int
    ) -> DeadLetterPage: ...

    async def sweep(
        self,
        queue: str,
        decide: Callable[[HeldMessage], Awaitable[tuple[TakeDecision, str]]],
        *,
        scan_limit: int,
        act_limit: int,
        wanted: Callable[[DeadLetter], bool],
    ) -> SweepReport: ...

    async def purge(self, queue: str) -> int: ...


class InFlightReports(Protocol):
    async def unacked(self, queues: Sequence[str]) -> dict[str, int | None]:
        """Deliveries the consumers of each queue report holding; None if none reports."""
        ...


class Republisher(Protocol):
    """Publishes replayed letters, each call returning after the broker's confirm."""

    @property
    def connected(self) -> bool:
        """The gateway's broker link is up (its topology declared)."""
        ...

    async def publish_job(self, body: bytes, routing_key: str, job_id: str) -> None: ...

    async def publish_delivery(self, body: bytes, webhook_id: str) -> None: ...


class ActionLimiter(Protocol):
    async def hit(self, actor: str) -> int | None:
        """Count one replay or purge call; the seconds to wait when over the limit, else None."""
        ...


class AuditLog(Protocol):
    async def record(self, actor: str, action: str, queue: str, detail: dict[str, Any]) -> str:
        """Append an entry; answers its id."""
        ...

    async def newest(self, limit: int) -> list[AuditEntry]: ...


class JobsView(JobLedger, Protocol):
    """Every tenant's jobs, and what a replay needs of the store."""

    async def recent(self, tenants: Sequence[str], limit: int) -> list[JobRecord]:
        """The newest `limit` jobs of these tenants, newest first, without their input."""
        ...

    async def timeline(self, job_id: str) -> list[TimelineEntry]: ...


class EventOutbox(Protocol):
    """The event outboxes (one per shard), read without taking anything from the relay."""

    async def newest(self) -> dict[int, str]:
        """Each shard outbox's newest entry id (`0-0` for an empty one)."""
        ...

    async def read_after(self, positions: dict[int, str]) -> list[tuple[int, str, str]]:
        """Entries (shard, id, event JSON) after each shard's position, waiting up to
        about a second for one."""
        ...


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One server-sent event of the admin's live view."""

    kind: str
    data: str
    id: str | None = None


# --------------------------------------------------------------------------- the service


@dataclass
class AdminService:
    """The admin API's use cases over the ports; one instance per gateway process."""

    queue_stats: QueueStatsReader
    dead_letters: DeadLetterQueues
    in_flight: InFlightReports
    republisher: Republisher
    limiter: ActionLimiter
    audit_log: AuditLog
    jobs: JobsView
    outbox: EventOutbox
    settings: AdminSettings
    services: tuple[str, ...]
    tiers: tuple[RetryTier, ...]
    tenants: tuple[str, ...]
    """Tenants that have an API key, sorted."""
    unavailable_retry_after: int

    @property
    def dead_queues(self) -> set[str]:
        return {topology.dead_queue(service) for service in self.services}

    # ------------------------------------------------------------------ queues

    async def queues(self) -> QueuesView:
        """Every work, retry and dead queue; keeps the `offload_queue_*` gauges in step."""
        try:
            return await self._read_queues()
        except Exception as exc:
            raise self._unavailable(f"the broker did not answer: {exc!r}") from exc

    async def refresh_gauges(self) -> None:
        """Read the queues for the gauges alone; nothing to read until the broker link is up."""
        if self.republisher.connected:
            await self._read_queues()

    async def _read_queues(self) -> QueuesView:
        stats = await self.queue_stats.stats(service_queues(self.services, self.tiers))
        consumed = [stat.queue.name for stat in stats if stat.exists and stat.consumers]
        reported = await self.in_flight.unacked(consumed)
        views = []
        for stat in stats:
            ref = stat.queue
            # Without consumers nothing is in flight; with them, what they report.
            unacked = reported.get(ref.name) if stat.consumers else (0 if stat.exists else None)
            stalled = ref.kind == "work" and bool(stat.ready) and not stat.consumers
            _set_gauges(stat, stalled, unacked)
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

    # ------------------------------------------------------------------ dead letters

    async def browse(self, queue: str, *, offset: int, limit: int) -> DeadLetterPageView:
        """A page of parked messages, oldest failure first; nothing is consumed."""
        self._known_dead_queue(queue)
        if limit > self.settings.admin_browse_limit:
            raise Invalid(f"limit must be at most {self.settings.admin_browse_limit}")
        try:
            page = await self.dead_letters.browse(
                queue, offset=offset, limit=limit, scan_limit=self.settings.admin_scan_limit
            )
        except QueueMissing as exc:
            raise _missing(queue) from exc
        except ConnectionError as exc:
            raise self._unavailable(_UNREACHABLE) from exc
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

    async def replay(self, queue: str, request: ReplayRequest, actor: str) -> ReplayView:
        """Replay the letters asked for; each is acked only once it is safely back.

        A job request puts its job back to `waiting` (attempts reset) and is
        published again as attempt 1; a webhook delivery (`notifier.dead`) goes
        back to the notifier's work queue as attempt 1, the job untouched.
        Letters that cannot be replayed stay, listed in `skipped` with the reason.
        """
        self._known_dead_queue(queue)
        if bool(request.job_ids) == request.all:
            raise Invalid('send either "job_ids": [...] or "all": true')
        await self._count_action(actor)
        if not self.republisher.connected:
            raise self._unavailable(_UNREACHABLE)
        wanted_ids = set(request.job_ids or ())
        seen: set[str] = set()

        def wanted(letter: DeadLetter) -> bool:
            if request.all:
                return True
            if letter.job_id in wanted_ids:
                seen.add(letter.job_id)
                return True
            return False

        replayer: Replayer | WebhookReplayer = (
            WebhookReplayer(self.republisher.publish_delivery)
            if queue == topology.dead_queue(topology.NOTIFIER_SERVICE)
            else Replayer(self.jobs, self.republisher.publish_job)
        )
        batch = self.settings.admin_replay_batch
        error: Exception | None = None
        scanned = remaining = 0
        try:
            report = await self.dead_letters.sweep(
                queue,
                replayer.decide,
                scan_limit=batch if request.all else self.settings.admin_scan_limit,
                act_limit=batch,
                wanted=wanted,
            )
            scanned, remaining = report.scanned, report.remaining
        except QueueMissing as exc:
            raise _missing(queue) from exc
        except Exception as exc:
            error = exc
        webhook_ids = replayer.webhook_ids if isinstance(replayer, WebhookReplayer) else None
        metrics.DEAD_LETTERS_REPLAYED.labels(queue).inc(
            len(replayer.replayed) if webhook_ids is None else len(webhook_ids)
        )
        detail: dict[str, Any] = {
            "requested": "all" if request.all else sorted(wanted_ids)[:1000],
            "replayed": replayer.replayed[:1000],
            "replayed_count": len(replayer.replayed),
            "skipped_count": len(replayer.skipped),
            "error": repr(error) if error else None,
        }
        if webhook_ids is not None:
            detail["webhook_ids"] = webhook_ids[:1000]
        audit_id = await self._audit(actor, "replay", queue, detail)
        if error is not None:
            raise self._unavailable(
                f"replay stopped: {error!r}; {len(replayer.replayed)} job(s) were replayed "
                "before it, the rest stay in the queue; call again to finish"
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

    async def purge(self, queue: str, confirm: str | None, actor: str) -> PurgeView:
        """Delete every message of a dead queue for good; `confirm` must repeat its name."""
        self._known_dead_queue(queue)
        if confirm != queue:
            raise Unconfirmed(
                f"purging deletes every message for good: repeat the queue's name, "
                f"`?confirm={queue}`"
            )
        await self._count_action(actor)
        try:
            purged = await self.dead_letters.purge(queue)
        except QueueMissing as exc:
            raise _missing(queue) from exc
        except ConnectionError as exc:
            raise self._unavailable(_UNREACHABLE) from exc
        metrics.DEAD_LETTERS_PURGED.labels(queue).inc(purged)
        audit_id = await self._audit(actor, "purge", queue, {"purged": purged})
        return PurgeView(queue=queue, purged=purged, audit_id=audit_id)

    async def audit(self, limit: int) -> list[AuditEntry]:
        """Who replayed or purged what, newest first."""
        return await self.audit_log.newest(limit)

    # ------------------------------------------------------------------ jobs

    async def recent_jobs(self, limit: int) -> AdminJobsView:
        """The newest `limit` jobs across every tenant that has an API key, with counts."""
        records = await self.jobs.recent(self.tenants, limit)
        jobs = [_admin_job(record, with_result=False) for record in records]
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status.value] = counts.get(job.status.value, 0) + 1
        return AdminJobsView(jobs=jobs, counts=counts, tenants=list(self.tenants))

    async def job(self, job_id: str) -> AdminJobDetail:
        """A job of any tenant, with its input and its events, oldest first."""
        record = await self.jobs.get(job_id) if _valid_id(job_id) else None
        if record is None:
            raise NotFound(f"no job {quoted(job_id)} (it may have expired)")
        return AdminJobDetail(
            job=_admin_job(record, with_result=True),
            input=record.input,
            events=await self.jobs.timeline(job_id),
        )

    async def live_events(
        self,
        positions: dict[int, str] | None,
        snapshot: int,
        disconnected: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[LiveEvent]:
        """Every job event as it is recorded, read from the shard outboxes.

        Without `positions` to resume after, the stream's position is fixed
        first, then a snapshot of the newest `snapshot` jobs is sent: so no
        later event is missed and none older than the snapshot follows it. Each
        event's id is the position in every shard (`offload_runtime.stream_cursor`).
        """
        if positions is None:
            positions = await self.outbox.newest()
            if snapshot:
                view = await self.recent_jobs(snapshot)
                yield LiveEvent("snapshot", view.model_dump_json())
        while not await disconnected():
            for shard, entry_id, data in await self.outbox.read_after(positions):
                positions[shard] = entry_id
                yield LiveEvent("job", data, stream_cursor.encode(positions))

    # ------------------------------------------------------------------ helpers

    def _known_dead_queue(self, queue: str) -> None:
        if queue not in self.dead_queues:
            known = ", ".join(sorted(self.dead_queues))
            raise NotFound(f"no dead-letter queue named {quoted(queue)} (known: {known})")

    async def _count_action(self, actor: str) -> None:
        retry_after = await self.limiter.hit(actor)
        if retry_after is not None:
            raise TooManyActions(
                f"at most {self.settings.admin_replay_per_minute} replay or purge calls a minute "
                f"per admin key; retry in {retry_after} s",
                retry_after=retry_after,
            )

    async def _audit(self, actor: str, action: str, queue: str, detail: dict[str, Any]) -> str:
        entry_id = await self.audit_log.record(actor, action, queue, detail)
        log.info("admin action", actor=actor, action=action, queue=queue, **detail)
        return entry_id

    def _unavailable(self, message: str) -> BrokerUnavailable:
        return BrokerUnavailable(message, retry_after=self.unavailable_retry_after)


def _set_gauges(stat: QueueStats, stalled: bool, unacked: int | None) -> None:
    ref = stat.queue
    if ref.kind == "work":
        metrics.QUEUE_STALLED.labels(ref.name, ref.service).set(1 if stalled else 0)
    if stat.exists:
        metrics.QUEUE_MESSAGES.labels(ref.name, ref.service, ref.kind).set(stat.ready or 0)
        metrics.QUEUE_CONSUMERS.labels(ref.name, ref.service, ref.kind).set(stat.consumers or 0)
        if unacked is not None:
            metrics.QUEUE_UNACKED.labels(ref.name, ref.service, ref.kind).set(unacked)


def _missing(queue: str) -> NotFound:
    return NotFound(f"{queue} is not declared on the broker")


def _admin_job(record: JobRecord, *, with_result: bool) -> AdminJobView:
    # A listing leaves results out (they can be large); a job's detail shows its result.
    fields = set(AdminJobView.model_fields) - (set() if with_result else {"result"})
    return AdminJobView.model_validate(record.model_dump(include=fields))


def _valid_id(job_id: str) -> bool:
    return 0 < len(job_id) <= 64 and all(c.isalnum() or c in "_-" for c in job_id)
