"""The notifier's domain with fakes: webhook decisions, SSE sessions, the relay's ack rule."""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from offload_contracts import EventKind, JobEvent
from offload_contracts.webhooks import WebhookDelivery
from offload_notifier.relay import OutboxEntry, Relay, RelayedEvent
from offload_notifier.streams import (
    PING,
    Frame,
    JobSnapshot,
    StreamBounds,
    StreamEntry,
    job_frames,
    tenant_frames,
)
from offload_notifier.webhooks import (
    Attempt,
    DeliveryFailed,
    DeliveryRefused,
    Outcome,
    again,
    delivery_for,
    parse_retry_after,
    payload_of,
    raise_for,
    wanted_events,
)
from offload_runtime.errors import JobFailure, PermanentError, TransientError
from offload_runtime.retry_tiers import exhausted, next_tier
from offload_runtime.settings import parse_retry_tiers
from offload_runtime.stream_ids import stream_id

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TIERS = parse_retry_tiers("1s,10s")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _event(kind: EventKind = EventKind.COMPLETED, **extra: object) -> JobEvent:
    return JobEvent(
        event_id="e1",
        job_id="j1",
        tenant="acme",
        type="image.process",
        event=kind,
        at=NOW,
        attempt=1,
        **extra,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- which events


def test_without_a_filter_only_terminal_events_are_sent() -> None:
    assert wanted_events({"url": "https://x"}) == {
        EventKind.COMPLETED,
        EventKind.FAILED,
        EventKind.CANCELLED,
    }
    assert wanted_events({"url": "https://x", "events": ["progress", "bogus"]}) == {
        EventKind.PROGRESS
    }


def test_a_delivery_is_scheduled_only_for_a_job_with_a_webhook_that_wants_the_event() -> None:
    spec = json.dumps({"url": "https://hooks.example/a"})
    delivery = delivery_for(_event(), spec)
    assert delivery is not None
    assert delivery.webhook_id == "e1" and delivery.attempt == 1
    assert delivery.url == "https://hooks.example/a"
    assert delivery_for(_event(EventKind.STARTED), spec) is None
    assert delivery_for(_event(), None) is None
    assert delivery_for(_event(), "not json") is None


def test_the_payload_is_type_timestamp_and_the_event() -> None:
    body = json.loads(payload_of(_event(result={"ok": True})))
    assert body["type"] == "image.process.completed"
    assert body["timestamp"] == "2026-01-01T00:00:00Z"
    assert body["data"]["result"] == {"ok": True} and "error" not in body["data"]


def test_the_payload_leaves_the_trace_context_out() -> None:
    traced = _event(result={"ok": True}, traceparent=TRACEPARENT)
    assert payload_of(traced) == payload_of(_event(result={"ok": True}))


# --------------------------------------------------------------------------- what next


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = NOW.timestamp()
    assert parse_retry_after("120", now=now) == 120
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


def _delivery(attempt: int = 1) -> WebhookDelivery:
    return WebhookDelivery(webhook_id="e1", url="https://x", event=_event(), attempt=attempt)


@pytest.mark.parametrize(
    ("result", "raised"),
    [
        (Attempt(Outcome.DELIVERED, status=204), None),
        (Attempt(Outcome.GONE, status=410), None),
        (Attempt(Outcome.REFUSED, error="private"), PermanentError),
        (Attempt(Outcome.FAILED, status=500), TransientError),
    ],
)
def test_each_outcome_leads_to_its_step(result: Attempt, raised: type[JobFailure] | None) -> None:
    if raised is None:
        raise_for(result, max_retry_after_s=3600)  # done: nothing raised
        return
    with pytest.raises(raised):
        raise_for(result, max_retry_after_s=3600)


def _failure(result: Attempt, *, max_retry_after_s: float = 60) -> DeliveryFailed:
    with pytest.raises(DeliveryFailed) as caught:
        raise_for(result, max_retry_after_s=max_retry_after_s)
    return caught.value


def test_a_refused_url_is_a_permanent_failure_of_its_own_kind() -> None:
    with pytest.raises(DeliveryRefused) as caught:
        raise_for(Attempt(Outcome.REFUSED, error="private"), max_retry_after_s=60)
    assert caught.value.kind == "refused" and caught.value.message == "private"


def test_failures_walk_the_tiers_then_go_dead_when_attempts_run_out() -> None:
    failed = _failure(Attempt(Outcome.FAILED, status=503, error="HTTP 503"))
    assert failed.http_status == 503 and failed.kind == "webhook_failed"
    first, second, last = (next_tier(TIERS, n, 3, failed.retry_after) for n in (1, 2, 3))
    assert first and first.name == "1s" and again(_delivery(1), first, None, now=NOW).attempt == 2
    assert second and second.name == "10s"
    assert last is None and "attempts exhausted: 3 of 3" in exhausted(failed.message, 3, 3)


def test_a_retry_after_longer_than_every_tier_sets_not_before() -> None:
    busy = Attempt(Outcome.FAILED, status=429, retry_after_s=300)
    failed = _failure(busy, max_retry_after_s=3600)
    tier = next_tier(TIERS, 1, 5, failed.retry_after)
    assert tier and tier.name == "10s"
    delivery = again(_delivery(), tier, failed.retry_after, now=NOW)
    assert delivery.not_before == NOW + timedelta(seconds=300)
    capped = _failure(busy, max_retry_after_s=60)
    assert capped.retry_after == 60
    capped_delivery = again(_delivery(), tier, capped.retry_after, now=NOW)
    assert capped_delivery.not_before == NOW + timedelta(seconds=60)


# --------------------------------------------------------------------------- SSE sessions


class FakeSubscription:
    def __init__(self, entries: list[StreamEntry]) -> None:
        self.entries = entries

    async def next(self, timeout: float) -> StreamEntry | None:
        return self.entries.pop(0) if self.entries else None


class FakeStreams:
    def __init__(self, entries: list[StreamEntry], trimmed: bool = False) -> None:
        self.entries = entries
        self.trimmed = trimmed
        self.followed_after: str | None = None

    @asynccontextmanager
    async def follow(self, key: str, after: str) -> AsyncIterator[FakeSubscription]:
        self.followed_after = after
        yield FakeSubscription([e for e in self.entries if stream_id(e.id) > stream_id(after)])

    def follow_job(
        self, job_id: str, key: str, after: str
    ) -> AbstractAsyncContextManager[FakeSubscription]:
        return self.follow(key, after)

    async def bounds(self, key: str) -> StreamBounds:
        if not self.entries:
            return StreamBounds(None, None)
        return StreamBounds(self.entries[0].id, self.entries[-1].id, self.trimmed)


class FakeSnapshots:
    def __init__(self, snapshot: JobSnapshot | None) -> None:
        self.value = snapshot

    async def snapshot(self, job_id: str) -> JobSnapshot | None:
        return self.value


def _entry(entry_id: str, kind: str) -> StreamEntry:
    return StreamEntry(entry_id, json.dumps({"event": kind}))


async def _frames(streams: FakeStreams, snapshots: FakeSnapshots, last: str | None) -> list:
    found = []
    async for frame in job_frames("j1", "k", last, source=streams, snapshots=snapshots, ping_s=0):
        found.append(frame)
        if frame is PING:
            break
    return found


async def test_a_session_ends_after_the_terminal_event_unless_more_follows() -> None:
    replayed = [_entry("1-0", "failed"), _entry("2-0", "queued"), _entry("3-0", "completed")]
    frames = await _frames(FakeStreams(replayed), FakeSnapshots(None), None)
    assert [f.id for f in frames] == ["1-0", "2-0", "3-0"]


async def test_resuming_from_the_last_event_of_a_finished_job_ends_at_once() -> None:
    done = [_entry("1-0", "queued"), _entry("2-0", "completed")]
    snapshot = JobSnapshot(view={"status": "completed"}, terminal=True, last_id="2-0")
    assert await _frames(FakeStreams(done), FakeSnapshots(snapshot), "2-0") == []


async def test_a_trimmed_resume_point_gets_resync_then_what_follows_the_snapshot() -> None:
    entries = [_entry("5-0", "progress"), _entry("6-0", "progress")]
    snapshot = JobSnapshot(view={"status": "active"}, terminal=False, last_id="5-0")
    streams = FakeStreams(entries, trimmed=True)
    frames = await _frames(streams, FakeSnapshots(snapshot), "2-0")
    assert frames[0].event == "resync" and frames[0].id == "5-0"
    assert json.loads(frames[0].data) == {"status": "active"}
    assert [f.id for f in frames[1:-1]] == ["6-0"] and frames[-1] is PING
    assert streams.followed_after == "5-0"


async def test_an_id_the_stream_never_gave_out_gets_resync() -> None:
    entries = [_entry("5-0", "progress")]
    snapshot = JobSnapshot(view={"status": "active"}, terminal=False, last_id="5-0")
    frames = await _frames(FakeStreams(entries), FakeSnapshots(snapshot), "99-0")
    assert frames[0].event == "resync"


@pytest.mark.parametrize(
    ("entries", "trimmed", "last_event_id", "reason"),
    [
        (["5-0", "6-0"], True, "2-0", "events since your Last-Event-ID were trimmed"),
        (
            ["5-0", "6-0"],
            False,
            "99999999999999-0",
            "your Last-Event-ID is later than this stream's last event, so not one it sent",
        ),
        ([], False, "5-0", "this stream holds no events to resume from"),
    ],
)
async def test_a_tenant_stream_that_cannot_resume_says_why(
    entries: list[str], trimmed: bool, last_event_id: str, reason: str
) -> None:
    streams = FakeStreams([_entry(i, "progress") for i in entries], trimmed=trimmed)
    frames = tenant_frames("k", last_event_id, source=streams, ping_s=0)
    resync = await anext(frames)
    await frames.aclose()
    assert isinstance(resync, Frame) and resync.event == "resync" and resync.data
    assert json.loads(resync.data) == {"reason": f"{reason}: re-read your jobs"}


# --------------------------------------------------------------------------- the relay


class FakeOutbox:
    def __init__(self) -> None:
        self.acked: list[str] = []

    async def read_new(self) -> list[OutboxEntry]:
        return []

    async def read_own_pending(self) -> list[OutboxEntry]:
        return []

    async def claim_stale(self) -> list[OutboxEntry]:
        return []

    async def ack(self, ids: Sequence[str]) -> None:
        self.acked.extend(ids)

    async def trim_acknowledged(self) -> int:
        return 0


class FakeSinks:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.tenant: list[RelayedEvent] = []
        self.published: list[RelayedEvent] = []
        self.webhooks: list[WebhookDelivery] = []

    async def append(self, events: Sequence[RelayedEvent]) -> None:
        self.tenant.extend(events)

    async def schedule_webhooks(self, deliveries: Sequence[WebhookDelivery]) -> None:
        self.webhooks.extend(deliveries)

    async def publish_events(self, events: Sequence[RelayedEvent]) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("broker down")
        self.published.extend(events)


def _relay(outbox: FakeOutbox, sinks: FakeSinks) -> Relay:
    return Relay(outbox, sinks, sinks, claim_every_s=1, trim_every_s=1, retry_after_failure_s=0.01)


async def test_a_batch_is_acknowledged_only_once_every_sink_has_it() -> None:
    outbox, sinks = FakeOutbox(), FakeSinks()
    hook = json.dumps({"url": "https://x"})
    entries = [
        OutboxEntry("1-0", _event(EventKind.STARTED).model_dump_json(), hook),
        OutboxEntry("2-0", _event().model_dump_json(), hook),
        OutboxEntry("3-0", "{not an event"),
    ]
    assert await _relay(outbox, sinks).relay(entries) == 2
    assert outbox.acked == ["1-0", "2-0", "3-0"]  # the unreadable one too: it never will be
    assert [r.event.event for r in sinks.published] == [EventKind.STARTED, EventKind.COMPLETED]
    assert [d.event.event for d in sinks.webhooks] == [EventKind.COMPLETED]


async def test_relayed_events_leave_the_trace_context_out_and_deliveries_keep_it() -> None:
    outbox, sinks = FakeOutbox(), FakeSinks()
    hook = json.dumps({"url": "https://x"})
    untraced = _event(EventKind.STARTED).model_dump_json(exclude_none=True)
    traced = _event(traceparent=TRACEPARENT).model_dump_json(exclude_none=True)
    await _relay(outbox, sinks).relay(
        [OutboxEntry("1-0", untraced), OutboxEntry("2-0", traced, hook)]
    )
    # What tenants and `jobs.events` get: the store's JSON as it was, or without the trace.
    assert sinks.tenant[0].json == untraced
    assert sinks.tenant[1].json == _event().model_dump_json(exclude_none=True)
    assert [r.json for r in sinks.published] == [r.json for r in sinks.tenant]
    # The delivery (an internal message) keeps it, so the notifier can continue the trace.
    assert sinks.tenant[1].event.traceparent == TRACEPARENT
    assert sinks.webhooks[0].event.traceparent == TRACEPARENT


def test_a_job_stream_entry_is_sent_without_its_trace_context() -> None:
    untraced = _event().model_dump_json(exclude_none=True)
    traced = StreamEntry("1-0", _event(traceparent=TRACEPARENT).model_dump_json(exclude_none=True))
    assert traced.public_data == untraced
    assert StreamEntry("2-0", untraced).public_data == untraced
    assert StreamEntry("3-0", '{"traceparent": 1}').public_data == '{"traceparent": 1}'


async def test_a_failed_publish_acknowledges_nothing() -> None:
    outbox, sinks = FakeOutbox(), FakeSinks(fail=True)
    with pytest.raises(ConnectionError):
        await _relay(outbox, sinks).relay([OutboxEntry("1-0", _event().model_dump_json())])
    assert outbox.acked == []


def test_the_webhook_domain_imports_no_broker_store_or_runner() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, offload_notifier.webhooks; "
        "print(sorted(m for m in ('faststream', 'redis', 'offload_runtime.store', "
        "'offload_runtime.runner', 'offload_runtime.consumer') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"
