"""Offload on a Redis Cluster of three masters and three replicas (no Docker).

The cluster is the session's (`tests/support/clusters.py`, fixture `redis_cluster`).
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_runtime.keys import RedisKeys
from tests.support.clusters import RedisCluster as LocalRedisCluster
from tests.support.gateway import ai_job, poll_job, running_gateway
from tests.support.infra import Infra
from tests.support.notifier import JobDriver, NotifierSpace, running_notifier, sse
from tests.support.sandbox import running_sandbox

JOBS = 40
"""Enough that every master holds some (16 shards over 3 masters: a miss is ~1 in 30,000)."""


@pytest.fixture
async def cluster_infra(infra: Infra, redis_cluster: LocalRedisCluster) -> AsyncIterator[Infra]:
    yield replace(infra, redis_url=redis_cluster.cluster_url)


async def _masters_holding(cluster: RedisCluster, keys: list[str]) -> set[str]:
    """The masters that hold each key, asked of each master itself (not of the client's map)."""
    holding = set()
    for key in keys:
        node = cluster.get_node_from_key(key)
        plain = aioredis.Redis(host=node.host, port=int(node.port), decode_responses=True)
        try:
            if await plain.exists(key):
                holding.add(node.name)
        finally:
            await plain.aclose()
    return holding


async def test_jobs_run_list_and_stream_on_a_cluster_spread_over_every_master(
    cluster_infra: Infra,
) -> None:
    async with (
        running_sandbox(sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=100_000) as sandbox,
        running_gateway(cluster_infra) as gw,
        gw.client() as http,
    ):
        store = gw.deps.store
        space = NotifierSpace(
            infra=cluster_infra,
            prefix=gw.settings.redis_prefix,
            service=f"nt{uuid.uuid4().hex[:10]}",
            api_keys=gw.api_keys,
            store=store,
            jobs=JobDriver(store),
            redis=gw.deps.redis,
        )
        settings: dict[str, Any] = {
            "rabbitmq_url": cluster_infra.rabbitmq_url,
            "redis_url": cluster_infra.redis_url,
            "redis_prefix": gw.settings.redis_prefix,
            "retry_tiers": gw.settings.retry_tiers,
            "shutdown_grace_s": 1,
            "log_level": "warning",
            "llm_base_url": sandbox.llm_base_url,
        }
        worker = build_ai(AiSettings(**settings))
        await worker.app.start()
        try:
            async with (
                running_notifier(space, sse_block_ms=100, sse_ping_s=0.2) as notifier,
                notifier.client("acme") as events_http,
            ):
                async with sse(events_http, "/v1/events") as stream:
                    subscribed = await stream.next()
                    assert subscribed is not None and subscribed.comment == "subscribed"
                    made = [
                        (await http.post("/v1/jobs", json=ai_job(f"cluster {n}"))).json()
                        for n in range(JOBS)
                    ]
                    first = await stream.events(JOBS, timeout=30)
                jobs = await asyncio.gather(*(poll_job(http, job["id"]) for job in made))
                assert {job["status"] for job in jobs} == {"completed"}

                # Every event of every job, as the store recorded them.
                recorded = {
                    _event_id(data) for job in made for _, data in await store.events(job["id"])
                }
                # Resumed after the last event seen: the rest, each once, none again.
                async with sse(
                    events_http, "/v1/events", last_event_id=first[-1].id
                ) as resumed_stream:
                    resumed = await resumed_stream.events(len(recorded) - len(first), timeout=30)
                    # Nothing follows them but pings: no event came twice.
                    after = await resumed_stream.next(2)
                assert after is not None and after.comment == "ping"
                # One job's own stream: its history, ending with its terminal event.
                async with sse(events_http, f"/v1/jobs/{made[0]['id']}/events") as job_stream:
                    history = await job_stream.rest(timeout=10)
                assert [event.json["event_id"] for event in history] == [
                    _event_id(data) for _, data in await store.events(made[0]["id"])
                ]
                assert history[-1].event == "completed"
        finally:
            await worker.app.stop()

        seen = [event.json["event_id"] for event in [*first, *resumed]]
        assert len(seen) == len(set(seen))
        assert set(seen) == recorded

        # Listed newest first, a page at a time, with a cursor across the shards.
        listed: list[dict[str, Any]] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
            page = (await http.get("/v1/jobs", params=params)).json()
            listed += page["items"]
            pages += 1
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert pages == -(-JOBS // 7)
        assert sorted(job["id"] for job in listed) == sorted(job["id"] for job in made)
        order = [(job["created_at"], job["id"]) for job in listed]
        assert order == sorted(order, reverse=True)

        # The jobs are spread over every master of the cluster.
        cluster = gw.deps.redis
        assert isinstance(cluster, RedisCluster)
        keys = RedisKeys(gw.settings.redis_prefix)
        masters = {node.name for node in cluster.get_primaries()}
        assert len(masters) == 3
        assert await _masters_holding(cluster, [keys.job(job["id"]) for job in made]) == masters


def _event_id(data: str) -> str:
    event_id: str = json.loads(data)["event_id"]
    return event_id
