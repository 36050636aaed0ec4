"""The Redis Cluster the suite starts works as a Redis Cluster: what the sharded store relies on."""

import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

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
