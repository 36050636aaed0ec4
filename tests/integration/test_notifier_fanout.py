"""SSE fan-out against the real Redis: one read of the event feed per process, each entry
handed to every follower of its job in process.

The helper `_transition` writes what the store's transition script writes for an
event, in one `MULTI`: the entry in the job's stream and the announcement in the
outbox.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from offload_notifier.adapters.redis_streams import Follower, RedisStreamHub
from offload_notifier.streams import START, StreamEntry
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from tests.support.infra import Infra


@pytest.fixture
async def client(infra: Infra) -> AsyncIterator["aioredis.Redis"]:
    redis = connect_redis(infra.redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
def keys(infra: Infra) -> RedisKeys:
    # One shard: one reader, fed by one outbox, as each shard's reader is.
    return RedisKeys(f"{infra.redis_prefix}fan{uuid.uuid4().hex[:8]}:", 1)


def _hub(client: "aioredis.Redis", keys: RedisKeys, **overrides: int) -> RedisStreamHub:
    options = {"block_ms": 300, "queue_limit": 10, **overrides}
    return RedisStreamHub(
        client,
        wake_key=keys.notifier_wake("test", 0),
        feed=keys.outbox(0),
        block_ms=options["block_ms"],
        queue_limit=options["queue_limit"],
    )


@pytest.fixture
async def hub(client: "aioredis.Redis", keys: RedisKeys) -> AsyncIterator[RedisStreamHub]:
    hub = _hub(client, keys)
    hub.start()
    yield hub
    await hub.stop()


async def _transition(
    client: "aioredis.Redis", keys: RedisKeys, job_id: str, n: int, *, announce: bool = True
) -> str:
    data = json.dumps({"job_id": job_id, "event": "progress", "n": n})
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.job_events(job_id), {"data": data})
        pipe.xadd(keys.outbox(0), {"data": data})
        if not announce:
            # The relay trimmed the announcement before the hub read it.
            pipe.xtrim(keys.outbox(0), maxlen=0, approximate=False)
        entry_id, *_ = await pipe.execute()
    return str(entry_id)


async def _take(subscription: Follower, count: int, timeout: float = 5) -> list[StreamEntry]:
    found: list[StreamEntry] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        entry = await subscription.next(max(0.01, deadline - time.monotonic()))
        if entry is None:
            raise AssertionError(f"got {len(found)} of {count} entries")
        found.append(entry)
    return found


def _numbers(entries: list[StreamEntry]) -> list[int]:
    return [json.loads(entry.data)["n"] for entry in entries]


async def test_many_followers_of_one_job_get_each_event_once_from_one_shared_read(
    hub: RedisStreamHub, client: "aioredis.Redis", keys: RedisKeys
) -> None:
    job = "job-many"
    async with AsyncExitStack() as stack:
        followers = await _follow_all(stack, hub, keys, [job] * 50)
        assert hub.keys_followed == 1
        ids = [await _transition(client, keys, job, n) for n in range(5)]
        received = await asyncio.gather(*(_take(f, 5) for f in followers))
        for entries in received:
            assert [entry.id for entry in entries] == ids
            assert _numbers(entries) == [0, 1, 2, 3, 4]
        # One object per event for all 50: each was read from Redis once, not per follower.
        for position in range(5):
            assert len({id(entries[position]) for entries in received}) == 1
        # Nothing more: no duplicate behind the five.
        assert all(await asyncio.gather(*(_none(f) for f in followers)))
    assert hub.keys_followed == 0


async def test_a_follower_resuming_mid_stream_joins_the_shared_reader_with_no_gap_or_duplicate(
    hub: RedisStreamHub, client: "aioredis.Redis", keys: RedisKeys
) -> None:
    job = "job-resume"
    key = keys.job_events(job)
    async with hub.follow_job(job, key, START) as live:
        ids = [await _transition(client, keys, job, n) for n in range(3)]
        assert [e.id for e in await _take(live, 3)] == ids
        # A client reconnecting with Last-Event-ID = the first event, while the job is live.
        async with hub.follow_job(job, key, ids[0]) as resumed:
            assert [e.id for e in await _take(resumed, 2)] == ids[1:]
            ids.append(await _transition(client, keys, job, 3))
            assert [e.id for e in await _take(resumed, 1)] == ids[3:]
            assert [e.id for e in await _take(live, 1)] == ids[3:]
            assert await _none(resumed) and await _none(live)


async def test_a_client_that_stops_reading_holds_no_other_and_later_gets_everything_in_order(
    hub: RedisStreamHub, client: "aioredis.Redis", keys: RedisKeys
) -> None:
    job = "job-slow"
    key = keys.job_events(job)
    async with hub.follow_job(job, key, START) as slow, hub.follow_job(job, key, START) as fast:
        assert await _none(slow) and await _none(fast)  # both joined
        ids = [await _transition(client, keys, job, n) for n in range(50)]  # 5 × queue limit
        # The fast one gets every entry while the slow one reads nothing.
        assert [e.id for e in await _take(fast, 50)] == ids
        # The slow one left the shared reader when its queue filled, and catches up from
        # Redis now that it reads: every entry, in order, once.
        assert [e.id for e in await _take(slow, 50)] == ids
        assert await _none(slow)
        ids.append(await _transition(client, keys, job, 50))
        assert [e.id for e in await _take(slow, 1)] == ids[50:]


async def test_announcements_trimmed_before_the_reader_saw_them_are_recovered_from_the_stream(
    hub: RedisStreamHub, client: "aioredis.Redis", keys: RedisKeys
) -> None:
    job = "job-trimmed"
    key = keys.job_events(job)
    async with hub.follow_job(job, key, START) as follower:
        ids = [await _transition(client, keys, job, 0)]
        assert [e.id for e in await _take(follower, 1)] == ids
        ids.append(await _transition(client, keys, job, 1, announce=False))
        ids.append(await _transition(client, keys, job, 2, announce=False))
        # The outbox's entries-added counter shows two entries the reader never saw: it
        # reads the followed job streams again (within one block of its read).
        assert [e.id for e in await _take(follower, 2, timeout=3)] == ids[1:]
        ids.append(await _transition(client, keys, job, 3))
        assert [e.id for e in await _take(follower, 1)] == ids[3:]
        assert await _none(follower)


async def test_followers_of_other_jobs_cost_the_reader_nothing_per_event(
    hub: RedisStreamHub, client: "aioredis.Redis", keys: RedisKeys
) -> None:
    jobs = [f"job-{n}" for n in range(200)]
    async with AsyncExitStack() as stack:
        followers = await _follow_all(stack, hub, keys, jobs + [jobs[7]] * 20)
        # One event through first: the reader has taken up the feed by then.
        await _transition(client, keys, jobs[0], 0)
        await _take(followers[0], 1)
        reads = _job_stream_reads()
        entry = await _transition(client, keys, jobs[7], 0)
        for follower in [followers[7], *followers[200:]]:
            assert [e.id for e in await _take(follower, 1)] == [entry]
        # One event: one job stream read, though 200 jobs and 21 clients of this one are
        # followed.
        assert _job_stream_reads() - reads == 1


def _job_stream_reads() -> float:
    return float(REGISTRY.get_sample_value("offload_sse_job_stream_reads_total") or 0)


async def _none(subscription: Follower) -> bool:
    return await subscription.next(0.2) is None


async def _follow_all(
    stack: AsyncExitStack, hub: RedisStreamHub, keys: RedisKeys, jobs: list[str]
) -> list[Follower]:
    """A follower of each of `jobs` (repeat a job to follow it more than once), joined."""
    followers = [
        await stack.enter_async_context(hub.follow_job(job, keys.job_events(job), START))
        for job in jobs
    ]
    # Each reads its stream up to now and joins the shared reader.
    assert all(await asyncio.gather(*(_none(f) for f in followers)))
    return followers
