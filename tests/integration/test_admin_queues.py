"""Queue inspection and dead-letter mechanics (the admin API's `amqp.py`) on the real RabbitMQ."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from offload_contracts import JobStatus, topology
from offload_gateway.adapters.broker import plain_channel
from offload_gateway.admin.amqp import AmqpQueues
from offload_gateway.admin.queues import HeldMessage, QueueMissing, QueueRef, service_queues
from offload_runtime.inflight import STALE_AFTER_S, InFlightReporter, read_unacked
from offload_runtime.redis import connect_redis
from offload_runtime.settings import parse_retry_tiers
from tests.support.harness import Harness
from tests.support.testjob import Recorder
from tests.support.waiting import wait_until


@pytest.fixture
async def ops(harness: Harness) -> AsyncIterator[AmqpQueues]:
    # The gateway hands its own connection's channels; a connection of the test's here.
    connection = await aio_pika.connect_robust(harness.infra.rabbitmq_url)
    async with connection:
        yield AmqpQueues(lambda: plain_channel(connection))


async def park(harness: Harness, count: int, *, start: int = 0) -> list[str]:
    """Put `count` letters in the harness service's dead queue, as the runner would."""
    ids = []
    connection = await aio_pika.connect(harness.infra.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.DEAD_EXCHANGE)
        for n in range(start, start + count):
            job_id = f"job{n:04d}-{uuid.uuid4().hex[:6]}"
            ids.append(job_id)
            await exchange.publish(
                aio_pika.Message(
                    json.dumps({"id": job_id, "type": "test.job", "tenant": "acme"}).encode(),
                    headers={
                        topology.HEADER_ERROR: f"boom {n}",
                        topology.HEADER_ERROR_TYPE: "permanent",
                        topology.HEADER_ATTEMPT: 2,
                        topology.HEADER_FAILED_AT: f"2026-01-01T00:00:{n:02d}+00:00",
                        topology.HEADER_SOURCE_QUEUE: topology.work_queue(harness.service),
                    },
                ),
                routing_key=harness.service,
            )
    return ids


def test_the_topology_lists_work_retry_and_dead_queues_per_service() -> None:
    refs = service_queues(["ai", "image"], parse_retry_tiers("30s,2m"))
    assert [(r.name, r.kind, r.tier) for r in refs] == [
        ("ai.jobs", "work", None),
        ("ai.retry.30s", "retry", "30s"),
        ("ai.retry.2m", "retry", "2m"),
        ("ai.dead", "dead", None),
        ("image.jobs", "work", None),
        ("image.retry.30s", "retry", "30s"),
        ("image.retry.2m", "retry", "2m"),
        ("image.dead", "dead", None),
    ]


async def test_a_missing_queue_is_reported_and_the_next_ones_still_read(
    harness: Harness, ops: AmqpQueues
) -> None:
    await park(harness, 2)
    dead = QueueRef(topology.dead_queue(harness.service), harness.service, "dead")
    missing = QueueRef("no-such.queue", "no-such", "work")
    stats = await ops.stats([missing, dead, missing, dead])
    assert [(s.exists, s.ready, s.consumers) for s in stats] == [
        (False, None, None),
        (True, 2, 0),
        (False, None, None),
        (True, 2, 0),
    ]
    assert all(s.unacked is None for s in stats)
    with pytest.raises(QueueMissing):
        await ops.depth("no-such.queue")


async def test_browsing_keeps_every_letter_and_the_order_and_consumer_counts(
    harness: Harness, ops: AmqpQueues
) -> None:
    queue = topology.dead_queue(harness.service)
    ids = await park(harness, 7)
    pages = []
    for offset in (0, 3, 6):
        page = await ops.browse(queue, offset=offset, limit=3)
        pages.append(page)
    assert [letter.job_id for page in pages for letter in page.items] == ids
    assert [page.next_offset for page in pages] == [3, 6, None]
    letter = pages[0].items[1]
    assert (letter.error, letter.error_type, letter.attempts, letter.reason) == (
        "boom 1",
        "permanent",
        2,
        "failed",
    )
    # Three full reads before this one: each letter says it was put back three times.
    again = await ops.browse(queue, offset=0, limit=10)
    assert [letter.job_id for letter in again.items] == ids
    assert {letter.browsed for letter in again.items} == {3}
    assert await ops.depth(queue) == 7
    # The browsing channels are closed: no consumer is left counted.
    ref = QueueRef(queue, harness.service, "dead")
    assert (await ops.stats([ref]))[0].consumers == 0


async def test_a_sweep_acks_only_what_was_decided_and_returns_the_rest(
    harness: Harness, ops: AmqpQueues
) -> None:
    queue = topology.dead_queue(harness.service)
    ids = await park(harness, 5)
    seen: list[str | None] = []

    async def decide(held: HeldMessage) -> tuple[str, str]:
        seen.append(held.letter.job_id)
        return ("ack", "taken") if held.letter.job_id == ids[1] else ("keep", "left")

    report = await ops.sweep(
        queue,
        decide,  # type: ignore[arg-type]
        scan_limit=100,
        act_limit=100,
        wanted=lambda letter: letter.job_id in {ids[1], ids[3]},
    )
    assert seen == [ids[1], ids[3]]
    assert (report.scanned, report.acked, report.kept, report.remaining) == (5, 1, 4, 4)
    left = await ops.browse(queue, offset=0, limit=10)
    assert [letter.job_id for letter in left.items] == [ids[0], ids[2], ids[3], ids[4]]


async def test_a_sweep_that_fails_midway_loses_nothing(harness: Harness, ops: AmqpQueues) -> None:
    queue = topology.dead_queue(harness.service)
    await park(harness, 3)

    async def decide(held: HeldMessage) -> tuple[str, str]:
        raise ConnectionError("broker went away")

    with pytest.raises(ConnectionError):
        await ops.sweep(queue, decide, scan_limit=10, act_limit=10)  # type: ignore[arg-type]
    page = await ops.browse(queue, offset=0, limit=10)
    assert page.total == 3 and len(page.items) == 3


async def test_purge_empties_a_dead_queue(harness: Harness, ops: AmqpQueues) -> None:
    queue = topology.dead_queue(harness.service)
    await park(harness, 4)
    assert await ops.purge(queue) == 4
    assert await ops.depth(queue) == 0
    with pytest.raises(QueueMissing):
        await ops.purge("no-such.dead")


async def test_workers_report_the_deliveries_they_hold_unacked(harness: Harness) -> None:
    recorder = Recorder()
    await harness.start_worker(recorder.handler(), concurrency=8)
    work_queue = topology.work_queue(harness.service)

    async def unacked() -> int | None:
        return (await read_unacked(harness.redis, harness.keys, [work_queue]))[work_queue]

    async def until_unacked(expected: int) -> None:
        await wait_until(
            unacked,
            lambda found: found == expected,
            timeout=10,
            what=f"{expected} unacked in {work_queue}",
        )

    await until_unacked(0)  # reporting, holding nothing
    jobs = [await harness.submit(block=True) for _ in range(3)]
    await until_unacked(3)  # three deliveries held while their jobs run

    for job in jobs:
        recorder.released[job.id].set()
    for job in jobs:
        await harness.wait_status(job.id, {JobStatus.COMPLETED})
    await until_unacked(0)


async def test_a_replica_gone_without_a_word_stops_counting(harness: Harness) -> None:
    queue = topology.work_queue(harness.service)
    key = harness.keys.in_flight(queue)
    stale_ms = int((time.time() - STALE_AFTER_S - 1) * 1000)
    await harness.redis.hset(key, mapping={"dead-replica": f"7 {stale_ms}"})

    assert await read_unacked(harness.redis, harness.keys, [queue]) == {queue: None}
    assert await harness.redis.hlen(key) == 0  # the stale report is dropped


async def test_a_reporter_stopped_at_any_moment_stops_promptly(harness: Harness) -> None:
    # redis-py can lose a cancel that lands while a connection is being set up; a
    # reporter that cancelled its loop then hung its worker's shutdown for ever (the
    # first version did, within ten tries). Stop it at staggered moments after start.
    for attempt in range(100):
        client = connect_redis(harness.infra.redis_url)
        reporter = InFlightReporter(client, harness.keys, "some.jobs", lambda: 0)
        reporter.start()
        await asyncio.sleep((attempt % 20) * 0.0002)
        stopping = asyncio.ensure_future(reporter.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        await client.aclose()
        assert done, f"stop() still waiting after 5 s (attempt {attempt})"
