"""The shared stream reader (one XREAD per process) against the real Redis."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from offload_notifier.adapters.redis_streams import Follower, RedisStreamHub
from offload_notifier.streams import START, StreamEntry
from offload_runtime.redis import connect_redis
from tests.support.infra import Infra


@pytest.fixture
async def client(infra: Infra) -> AsyncIterator["aioredis.Redis"]:
    redis = connect_redis(infra.redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def prefix(infra: Infra) -> str:
    return f"{infra.redis_prefix}hub{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def hub(client: "aioredis.Redis", prefix: str) -> AsyncIterator[RedisStreamHub]:
    hub = RedisStreamHub(client, wake_key=f"{prefix}wake", block_ms=3000, queue_limit=10)
    hub.start()
    yield hub
    await hub.stop()


async def _add(client: "aioredis.Redis", key: str, *values: str) -> list[str]:
    return [await client.xadd(key, {"data": value}) for value in values]


async def _take(subscription: Follower, count: int, timeout: float = 5) -> list[StreamEntry]:
    found: list[StreamEntry] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        entry = await subscription.next(max(0.01, deadline - time.monotonic()))
        if entry is None:
            raise AssertionError(f"got {len(found)} of {count} entries")
        found.append(entry)
    return found


async def test_followers_joining_at_different_points_each_get_every_entry_once(
    hub: RedisStreamHub, client: "aioredis.Redis", prefix: str
) -> None:
    key = f"{prefix}s"
    ids = await _add(client, key, "a", "b")
    async with hub.follow(key, START) as first:
        assert [e.data for e in await _take(first, 2)] == ["a", "b"]
        ids += await _add(client, key, "c", "d")
        # This one joins while the hub is ahead of, then level with, the first follower.
        async with hub.follow(key, ids[0]) as second:
            ids += await _add(client, key, "e")
            assert [e.id for e in await _take(second, 4)] == ids[1:]
            assert [e.id for e in await _take(first, 3)] == ids[2:]
            ids += await _add(client, key, "f")
            assert [e.data for e in await _take(first, 1)] == ["f"]
            assert [e.data for e in await _take(second, 1)] == ["f"]
            assert hub.keys_followed == 1
    assert hub.keys_followed == 0


async def test_a_key_followed_during_a_blocked_read_is_served_at_once(
    hub: RedisStreamHub, client: "aioredis.Redis", prefix: str
) -> None:
    async with hub.follow(f"{prefix}busy", START):
        await asyncio.sleep(0.1)  # the hub now blocks (3 s) on the first key only
        async with hub.follow(f"{prefix}new", START) as late:
            assert await late.next(0.05) is None  # history read, joined, nothing yet
            began = time.monotonic()
            await _add(client, f"{prefix}new", "x")
            [entry] = await _take(late, 1)
            waited = time.monotonic() - began

    assert entry.data == "x"
    assert waited < 1.5  # well below the 3 s block: the wake stream interrupted it


async def test_a_follower_that_falls_behind_catches_up_from_redis_in_order(
    hub: RedisStreamHub, client: "aioredis.Redis", prefix: str
) -> None:
    key = f"{prefix}slow"
    async with hub.follow(key, START) as slow, hub.follow(key, START) as fast:
        assert await slow.next(0.05) is None and await fast.next(0.05) is None
        values = [str(n) for n in range(50)]  # five times the follower's queue limit
        ids = await _add(client, key, *values)
        assert [e.id for e in await _take(fast, 50)] == ids
        assert [e.id for e in await _take(slow, 50)] == ids  # nothing lost, nothing twice
        await _add(client, key, "after")
        assert [e.data for e in await _take(slow, 1)] == ["after"]


async def test_bounds_report_the_first_and_last_ids_and_whether_entries_were_trimmed(
    hub: RedisStreamHub, client: "aioredis.Redis", prefix: str
) -> None:
    key = f"{prefix}b"
    assert (await hub.bounds(key)).first is None
    ids = await _add(client, key, "a", "b", "c")
    whole = await hub.bounds(key)
    assert (whole.first, whole.last, whole.trimmed) == (ids[0], ids[-1], False)
    await client.xtrim(key, maxlen=2, approximate=False)
    trimmed = await hub.bounds(key)
    assert (trimmed.first, trimmed.last, trimmed.trimmed) == (ids[1], ids[-1], True)
