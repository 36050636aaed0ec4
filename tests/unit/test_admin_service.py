"""What the admin API does (`AdminService`), with in-memory ports."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from offload_contracts import JobStatus
from offload_contracts.admin import AuditEntry, ReplayRequest, TimelineEntry
from offload_gateway.adapters.broker import QueueCount
from offload_gateway.admin.queues import (
    DeadLetter,
    DeadLetterPage,
    HeldMessage,
    QueueRef,
    QueueStats,
    SweepReport,
    TakeDecision,
)
from offload_gateway.admin.service import (
    AdminService,
    BrokerUnavailable,
    Invalid,
    NotFound,
    TooManyActions,
    Unconfirmed,
)
from offload_gateway.admin.settings import AdminSettings
from offload_runtime.settings import parse_retry_tiers
from offload_runtime.store import JobRecord, TransitionResult


@dataclass
class World:
    """Every port of the admin service, in memory, recording what was done."""

    calls: list[str] = field(default_factory=list)
    counts: dict[str, QueueCount | None] = field(default_factory=dict)
    reported: dict[str, int | None] = field(default_factory=dict)
    connected: bool = True
    over_limit: bool = False
    sweep_error: Exception | None = None
    audited: list[dict[str, Any]] = field(default_factory=list)
    records: list[JobRecord] = field(default_factory=list)

    # QueueStatsReader
    async def stats(self, refs: Sequence[QueueRef]) -> list[QueueStats]:
        return [QueueStats.of(ref, self.counts.get(ref.name)) for ref in refs]

    # DeadLetterQueues
    async def browse(
        self, queue: str, *, offset: int, limit: int, scan_limit: int
    ) -> DeadLetterPage:
        return DeadLetterPage(queue, 0, offset, [])

    async def sweep(
        self,
        queue: str,
        decide: Callable[[HeldMessage], Awaitable[tuple[TakeDecision, str]]],
        *,
        scan_limit: int,
        act_limit: int,
        wanted: Callable[[DeadLetter], bool],
    ) -> SweepReport:
        self.calls.append(f"sweep:{queue}")
        if self.sweep_error:
            raise self.sweep_error
        return SweepReport()

    async def purge(self, queue: str) -> int:
        self.calls.append(f"purge:{queue}")
        return 3

    # InFlightReports
    async def unacked(self, queues: Sequence[str]) -> dict[str, int | None]:
        return {queue: self.reported.get(queue) for queue in queues}

    # Republisher
    async def publish_job(self, body: bytes, routing_key: str, job_id: str) -> None:
        self.calls.append(f"publish:{job_id}")

    async def publish_delivery(self, body: bytes, webhook_id: str) -> None:
        self.calls.append(f"deliver:{webhook_id}")

    # ActionLimiter
    async def hit(self, actor: str) -> int | None:
        self.calls.append("count")
        return 17 if self.over_limit else None

    # AuditLog
    async def record(self, actor: str, action: str, queue: str, detail: dict[str, Any]) -> str:
        self.audited.append({"action": action, "queue": queue, **detail})
        return f"{len(self.audited)}-0"

    async def newest(self, limit: int) -> list[AuditEntry]:
        return []

    # JobsView
    async def get(self, job_id: str) -> JobRecord | None:
        return next((record for record in self.records if record.id == job_id), None)

    async def replay(self, job: JobRecord) -> TransitionResult:
        return TransitionResult(True, job.status.value, job.attempt)

    async def recent(self, tenants: Sequence[str], limit: int) -> list[JobRecord]:
        return self.records[:limit]

    async def timeline(self, job_id: str) -> list[TimelineEntry]:
        return []

    # EventOutbox
    async def newest_id(self) -> str | None:
        return None

    async def read_after(self, position: str) -> list[tuple[str, str]]:
        return []


def service(world: World) -> AdminService:
    return AdminService(
        queue_stats=world,
        dead_letters=world,
        in_flight=world,
        republisher=world,
        limiter=world,
        audit_log=world,
        jobs=world,
        outbox=world,
        settings=AdminSettings(),
        services=("ai", "notifier"),
        tiers=parse_retry_tiers("30s"),
        tenants=("acme",),
        unavailable_retry_after=2,
    )


async def test_queues_say_what_is_stalled_and_what_is_in_flight() -> None:
    world = World(
        counts={"ai.jobs": QueueCount(4, 0), "notifier.jobs": QueueCount(0, 2)},
        reported={"notifier.jobs": 5},
    )
    view = await service(world).queues()
    queues = {queue.name: queue for queue in view.queues}
    assert queues["ai.jobs"].stalled and queues["ai.jobs"].unacked == 0
    assert not queues["notifier.jobs"].stalled and queues["notifier.jobs"].unacked == 5
    assert not queues["ai.dead"].exists and queues["ai.dead"].unacked is None


async def test_refused_replays_and_purges_change_nothing() -> None:
    world = World()
    admin = service(world)
    with pytest.raises(NotFound, match=r"known: ai\.dead, notifier\.dead"):
        await admin.replay("ai.jobs", ReplayRequest(all=True), "admin:x")
    with pytest.raises(Invalid):
        await admin.replay("ai.dead", ReplayRequest(job_ids=["a"], all=True), "admin:x")
    with pytest.raises(Unconfirmed):
        await admin.purge("ai.dead", "ai.jobs", "admin:x")
    assert world.calls == [] and world.audited == []  # not even counted against the limit

    world.over_limit = True
    with pytest.raises(TooManyActions) as over:
        await admin.purge("ai.dead", "ai.dead", "admin:x")
    assert over.value.retry_after == 17 and world.calls == ["count"]

    world.over_limit, world.connected, world.calls = False, False, []
    with pytest.raises(BrokerUnavailable) as down:
        await admin.replay("ai.dead", ReplayRequest(all=True), "admin:x")
    assert down.value.retry_after == 2 and world.calls == ["count"] and world.audited == []


async def test_a_replay_cut_short_is_audited_and_says_so() -> None:
    world = World(sweep_error=ConnectionError("gone"))
    with pytest.raises(BrokerUnavailable, match="replay stopped: ConnectionError"):
        await service(world).replay("ai.dead", ReplayRequest(all=True), "admin:x")
    assert world.audited[0]["error"] == "ConnectionError('gone')"


async def test_a_listing_leaves_results_out_and_a_jobs_detail_shows_it() -> None:
    record = JobRecord(
        id="job1",
        tenant="acme",
        type="ai.generate",
        status=JobStatus.COMPLETED,
        max_attempts=3,
        input={"prompt": "hi"},
        result={"text": "hello"},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    admin = service(World(records=[record]))
    listed = await admin.recent_jobs(10)
    assert listed.jobs[0].result is None and listed.counts == {"completed": 1}
    detail = await admin.job("job1")
    assert detail.job.result == {"text": "hello"} and detail.input == {"prompt": "hi"}
    with pytest.raises(NotFound):
        await admin.job("no/such")
