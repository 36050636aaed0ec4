"""The Redis Cluster the suite starts works as a Redis Cluster: what the sharded store relies on."""

import uuid

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from offload_runtime.redis import connect_redis, stream_read_keys
from tests.support.clusters import RedisCluster

# One script touching two keys, as the store's transitions do.
TOUCH_BOTH = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"


def test_the_cluster_has_three_masters_and_three_replicas(redis_cluster: RedisCluster) -> None:
    nodes = redis_cluster.cli(redis_cluster.ports[0], "cluster", "nodes").splitlines()
    roles = sorted("master" if "master" in line.split()[2] else "slave" for line in nodes)
    assert roles == ["master"] * 3 + ["slave"] * 3
    assert len(redis_cluster.masters()) == 3
    info = redis_cluster.cli(redis_cluster.ports[0], "cluster", "info")
    assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info


async def test_a_script_whose_keys_share_a_tag_runs_and_one_without_is_refused(
    redis_cluster: RedisCluster,
) -> None:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        assert await client.eval(TOUCH_BOTH, 2, "job:{s7}:a", "outbox:{s7}", "x") == 1
        assert await client.eval(TOUCH_BOTH, 2, "job:{s7}:a", "outbox:{s7}", "y") == 2
    finally:
        await client.aclose()

    # Any node refuses keys of two slots (CROSSSLOT; redis-py keeps only the text),
    # before it would redirect (MOVED).
    for port in redis_cluster.masters():
        plain = redis.Redis(port=port)
        try:
            with pytest.raises(ResponseError, match="hash to the same slot"):
                await plain.eval(TOUCH_BOTH, 2, "job:a", "outbox", "x")
        finally:
            await plain.aclose()


async def test_keys_with_different_tags_land_on_every_master(redis_cluster: RedisCluster) -> None:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        for shard in range(16):
            await client.set(f"probe:{{s{shard}}}", shard)
        counts = []
        for port in redis_cluster.masters():
            node = redis.Redis(port=port)
            try:
                counts.append(len(await node.keys("probe:*")))
            finally:
                await node.aclose()
        assert sum(counts) == 16
        assert all(count > 0 for count in counts), counts
    finally:
        await client.aclose()


async def _getkeys_calls(redis_cluster: RedisCluster) -> int:
    """`COMMAND GETKEYS` calls the cluster's masters have answered so far."""
    total = 0
    for port in redis_cluster.masters():
        node = redis.Redis(port=port, decode_responses=True)
        try:
            stats = await node.info("commandstats")
        finally:
            await node.aclose()
        total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


async def test_stream_reads_find_their_node_without_asking_the_cluster(
    redis_cluster: RedisCluster,
) -> None:
    client = connect_redis(redis_cluster.cluster_url)
    stream = f"events:{{s{uuid.uuid4().hex[:6]}}}"
    try:
        first = await client.xadd(stream, {"n": "1"})
        await client.xgroup_create(stream, "relay", id="0")
        before = await _getkeys_calls(redis_cluster)

        # Inside a MULTI, redis-py finds each command's node in another thread and
        # event loop: asking a node there broke the connections of the client's loop.
        for _ in range(20):
            async with client.pipeline(transaction=True) as pipe:
                pipe.xrange(stream, "-", "+")
                pipe.xread({stream: "0"}, count=10)
                ranged, read = await pipe.execute()
            assert [entry_id for entry_id, _ in ranged] == [first]
            assert [entry_id for entry_id, _ in read[0][1]] == [first]
        plain = await client.xread({stream: "0"}, count=10, block=10)
        grouped = await client.xreadgroup("relay", "c1", {stream: ">"}, count=10, block=10)

        assert [entry_id for entry_id, _ in plain[0][1]] == [first]
        assert [entry_id for entry_id, _ in grouped[0][1]] == [first]
        # No extra round trip per read: the client read the keys from the command.
        assert await _getkeys_calls(redis_cluster) == before
    finally:
        await client.delete(stream)
        await client.aclose()


@pytest.mark.parametrize(
    ("command", "keys"),
    [
        (("XREAD", "COUNT", 5, "BLOCK", 100, "STREAMS", "a", "b", "0", "0"), ("a", "b")),
        (("XREAD", "STREAMS", "a", "$"), ("a",)),
        (("XREADGROUP", "GROUP", "g", "STREAMS", "NOACK", "STREAMS", "k", ">"), ("k",)),
        ((b"xreadgroup", b"GROUP", b"g", b"c", b"COUNT", b"1", b"STREAMS", b"k", b">"), ("k",)),
        (("XREAD", "STREAMS", "a", "b", "0"), None),  # not a key per id: let Redis say
        (("XREAD", "SOMEDAY", "1", "STREAMS", "a", "0"), None),  # an option it does not know
        (("GET", "a"), None),
    ],
)
def test_the_keys_of_a_stream_read_are_read_from_the_command(
    command: tuple[object, ...], keys: tuple[str, ...] | None
) -> None:
    assert stream_read_keys(command) == keys
