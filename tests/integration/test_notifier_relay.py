"""The outbox relay against the real Redis and RabbitMQ (DESIGN §4, §6)."""

import json
from collections.abc import AsyncIterator

import aio_pika
import pytest

from offload_contracts import topology
from offload_notifier.adapters.outbox import GROUP
from offload_runtime.stream_ids import stream_id
from tests.support.infra import Infra
from tests.support.notifier import (
    NoteRequest,
    NotifierSpace,
    notifier_space,
    running_notifier,
    sse,
    until,
)


@pytest.fixture
async def space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    async with notifier_space(infra) as space:
        for key in _outboxes(space):
            await space.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        yield space


class EventsQueue:
    """A queue of our own bound to `jobs.events`, as an analytics system would bind one."""

    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.received: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def __aenter__(self) -> "EventsQueue":
        self.connection = await aio_pika.connect(self.infra.rabbitmq_url)
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(
            topology.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="note.job.#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.received.append(message)

        await queue.consume(keep, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    def events_of(self, job_id: str) -> list[dict[str, object]]:
        found = [json.loads(m.body) for m in self.received]
        return [event for event in found if event["job_id"] == job_id]


async def _tenant_events(space: NotifierSpace, tenant: str = "acme") -> list[dict[str, object]]:
    """The tenant's relayed events of every shard, in the order they were relayed."""
    entries = [
        entry
        for shard in space.keys.all_shards
        for entry in await space.redis.xrange(space.keys.tenant_events(tenant, shard))
    ]
    entries.sort(key=lambda entry: stream_id(entry[0]))
    return [json.loads(fields["data"]) for _, fields in entries]


def _outboxes(space: NotifierSpace) -> list[str]:
    return [space.keys.outbox(shard) for shard in space.keys.all_shards]


def _outbox_of(space: NotifierSpace, job: NoteRequest) -> str:
    return space.keys.outbox(space.keys.shard(job.id))


async def _job_event_ids(space: NotifierSpace, job: NoteRequest) -> list[str]:
    entries = await space.redis.xrange(space.keys.job_events(job.id))
    return [json.loads(fields["data"])["event_id"] for _, fields in entries]


async def test_events_reach_a_queue_bound_to_the_events_exchange_in_order(
    space: NotifierSpace,
) -> None:
    async with EventsQueue(space.infra) as bound, running_notifier(space):
        job = await space.jobs.create()
        await space.jobs.start(job)
        await space.jobs.progress(job, 50)
        await space.jobs.complete(job)
        await until(lambda: len(bound.events_of(job.id)) == 4, what="four events")

    events = bound.events_of(job.id)
    assert [e["event"] for e in events] == ["queued", "started", "progress", "completed"]
    assert [e["event_id"] for e in events] == await _job_event_ids(space, job)
    mine = [m for m in bound.received if json.loads(m.body)["job_id"] == job.id]
    assert [m.routing_key for m in mine] == [
        "note.job.queued",
        "note.job.started",
        "note.job.progress",
        "note.job.completed",
    ]
    assert all(m.message_id == json.loads(m.body)["event_id"] for m in mine)
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in mine)


async def test_nothing_is_lost_while_no_notifier_runs(space: NotifierSpace) -> None:
    # Events happen while every notifier is down...
    jobs = [await space.jobs.create() for _ in range(5)]
    for job in jobs:
        await space.jobs.start(job)
        await space.jobs.complete(job)

    # ...and all of them go out once one starts.
    async with EventsQueue(space.infra) as bound, running_notifier(space):
        await until(
            lambda: all(len(bound.events_of(job.id)) == 3 for job in jobs), what="every event"
        )
        await until(lambda: _outbox_len(space, 0), what="the outbox to be trimmed")

    relayed = await _tenant_events(space)
    expected = [event_id for job in jobs for event_id in await _job_event_ids(space, job)]
    assert sorted(e["event_id"] for e in relayed) == sorted(expected)  # each exactly once


async def _outbox_len(space: NotifierSpace, length: int) -> bool:
    return sum([int(await space.redis.xlen(key)) for key in _outboxes(space)]) == length


async def _pending(space: NotifierSpace) -> int:
    summaries = [await space.redis.xpending(key, GROUP) for key in _outboxes(space)]
    return sum(int(summary["pending"]) for summary in summaries)


async def test_entries_left_pending_by_a_dead_notifier_are_claimed_by_another(
    space: NotifierSpace,
) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    # A notifier read these two entries, then died before acknowledging them.
    taken = await space.redis.xreadgroup(
        GROUP, "dead-notifier", {_outbox_of(space, job): ">"}, count=10
    )
    assert len(taken[0][1]) == 2

    async with running_notifier(space, relay_claim_idle_ms=200):
        await space.jobs.complete(job)
        await until(lambda: _tenant_count(space, 3), what="the claimed entries to be relayed")
        await until(lambda: _pending_is(space, 0), what="every entry to be acknowledged")

    relayed = await _tenant_events(space)
    assert [e["event_id"] for e in relayed if e["event"] != "completed"] == (
        await _job_event_ids(space, job)
    )[:2]


async def _tenant_count(space: NotifierSpace, count: int) -> bool:
    return len(await _tenant_events(space)) >= count


async def _pending_is(space: NotifierSpace, count: int) -> bool:
    return await _pending(space) == count


async def test_the_outbox_is_trimmed_only_of_acknowledged_entries(space: NotifierSpace) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    # A slow (alive) notifier took both entries and has acknowledged only the first.
    taken = await space.redis.xreadgroup(
        GROUP, "slow-notifier", {_outbox_of(space, job): ">"}, count=2
    )
    (done_id, _), (pending_id, _) = taken[0][1]
    await space.redis.xack(_outbox_of(space, job), GROUP, done_id)

    # The idle threshold is long, so nobody claims the pending entry meanwhile.
    async with running_notifier(space, relay_claim_idle_ms=60_000):
        await space.jobs.complete(job)
        await until(lambda: _tenant_count(space, 1), what="the new event to be relayed")
        await until(lambda: _outbox_len(space, 2), what="the acknowledged entry to be trimmed")
        remaining = [entry_id for entry_id, _ in await space.redis.xrange(_outbox_of(space, job))]
        # Everything from the oldest pending entry on stays, acknowledged or not.
        assert remaining[0] == pending_id

        await space.redis.xack(_outbox_of(space, job), GROUP, pending_id)
        await until(lambda: _outbox_len(space, 0), what="the rest to be trimmed")


async def test_two_notifiers_share_the_outbox_and_both_serve_one_jobs_stream(
    space: NotifierSpace,
) -> None:
    async with (
        running_notifier(space) as one,
        running_notifier(space) as two,
        one.client() as http_one,
        two.client() as http_two,
    ):
        job = await space.jobs.create()
        async with (
            sse(http_one, f"/v1/jobs/{job.id}/events") as from_one,
            sse(http_two, f"/v1/jobs/{job.id}/events") as from_two,
        ):
            await space.jobs.start(job)
            others = [await space.jobs.create() for _ in range(20)]
            await space.jobs.complete(job)
            seen_one = await from_one.rest()
            seen_two = await from_two.rest()
        await until(lambda: _tenant_count(space, 23), what="every event in the tenant stream")
        consumers = await space.redis.xinfo_consumers(_outbox_of(space, job), GROUP)

    assert [(e.id, e.data) for e in seen_one] == [(e.id, e.data) for e in seen_two]
    assert [e.event for e in seen_one] == ["queued", "started", "completed"]
    relayed = [e["event_id"] for e in await _tenant_events(space)]
    assert len(relayed) == len(set(relayed)) == 3 + len(others)
    assert {c["name"] for c in consumers} >= {
        one.parts.settings.notifier_consumer,
        two.parts.settings.notifier_consumer,
    }


async def test_the_relay_recovers_when_the_outbox_and_its_group_vanish(
    space: NotifierSpace,
) -> None:
    async with running_notifier(space) as notifier:
        first = await space.jobs.create()
        await until(lambda: _tenant_count(space, 1), what="the first event")
        # As after a restart of a Redis that keeps nothing on disk.
        await space.redis.delete(*_outboxes(space))
        second = await space.jobs.create()
        await until(lambda: _tenant_count(space, 2), what="events after the loss")
        # The relay writes the tenant's stream before it marks its batch done.
        await until(lambda: notifier.parts.relay.healthy, what="the relay healthy again")

    relayed = [e["job_id"] for e in await _tenant_events(space)]
    assert relayed == [first.id, second.id]
