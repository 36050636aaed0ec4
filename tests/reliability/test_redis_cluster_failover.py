"""A Redis Cluster master killed under a stream of submissions: its replica takes over.

The gateway, an ai worker (on the sandbox LLM) and the notifier run as processes
on the session's Redis Cluster (3 masters, 3 replicas, `cluster-node-timeout`
1000 ms). A master is SIGKILLed while four clients submit; until its replica is
promoted, the slots it held are down: submissions of jobs whose shard lives
there get a 503 with `Retry-After`, the others keep being accepted, and the
worker's state changes on those shards wait it out. Every job that got a 202
completes, once.
"""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.reliability.outcomes import settle
from tests.support.clusters import RedisCluster
from tests.support.infra import Infra
from tests.support.serving import free_port
from tests.support.stack import Stack, running_stack
from tests.support.waiting import wait_until


@pytest.fixture
async def cluster_stack(infra: Infra, redis_cluster: RedisCluster) -> AsyncIterator[Stack]:
    async with running_stack(
        infra, redis_url=redis_cluster.cluster_url, rate_limit_per_s=0
    ) as stack:
        notifier_port = free_port()
        stack.start("notifier", "offload_notifier", notifier_port=notifier_port)
        await stack.wait_ready(f"http://127.0.0.1:{notifier_port}", "/readyz")
        try:
            yield stack
        finally:
            # A node the test killed starts again: the session's cluster is whole again
            # (3 masters, 3 replicas) for the tests after this one.
            for port in set(redis_cluster.ports) - set(redis_cluster.live_ports()):
                await asyncio.to_thread(redis_cluster.restart, port)


async def submit_stream(
    stack: Stack, accepted: list[str], refused: list[httpx.Response], stop: asyncio.Event
) -> None:
    """Submit jobs until told to stop: 202s go to `accepted`, every other answer to `refused`."""
    while not stop.is_set():
        answer = await stack.http.post("/v1/jobs", json=stack.ai_job())
        if answer.status_code == 202:
            accepted.append(answer.json()["id"])
        else:
            refused.append(answer)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.005)


async def test_a_master_killed_under_submissions_loses_no_accepted_job(
    redis_cluster: RedisCluster, cluster_stack: Stack
) -> None:
    stack = cluster_stack
    victim = redis_cluster.masters()[0]
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    stop = asyncio.Event()
    submitters = [
        asyncio.create_task(submit_stream(stack, accepted, refused, stop)) for _ in range(4)
    ]
    try:
        await wait_until(
            lambda: _count(accepted), lambda n: n >= 100, timeout=60, what="100 jobs accepted"
        )
        at_kill = len(accepted)
        killed_at = time.monotonic()
        await asyncio.to_thread(redis_cluster.kill, victim)
        promoted = await wait_until(
            lambda: asyncio.to_thread(redis_cluster.masters),
            lambda masters: len(masters) == 3 and victim not in masters,
            timeout=30,
            what="a replica promoted in the killed master's place",
        )
        failover_s = time.monotonic() - killed_at
        # Served again on the new master: more jobs accepted after the failover.
        after_failover = len(accepted)
        await wait_until(
            lambda: _count(accepted),
            lambda n: n >= after_failover + 100,
            timeout=60,
            what="100 more jobs accepted after the failover",
        )
    finally:
        stop.set()
        await asyncio.gather(*submitters, return_exceptions=True)

    # While the slots were down, clients were told to come back, never given a 500.
    assert refused, "no submission met the dead master's slots"
    unhandled = [line for line in stack.logs().splitlines() if "unhandled error" in line]
    assert {answer.status_code for answer in refused} == {503}, unhandled[:1]
    assert all(answer.headers.get("retry-after") for answer in refused)
    assert victim not in promoted

    outcome = await settle(
        stack.store,
        accepted,
        scenario="Redis Cluster: a master killed (SIGKILL) under a stream of submissions "
        "(gateway, worker and notifier on the cluster)",
        load=f"4 submitters; master killed after {at_kill} accepted, its replica promoted "
        f"{failover_s:.1f} s later; "
        f"{len(accepted)} accepted, {len(refused)} answered 503 while its slots were down",
    )
    stack.assert_settled(outcome)
    assert all(p.process and p.process.poll() is None for p in stack.processes.values())


async def _count(items: list[str]) -> int:
    return len(items)
