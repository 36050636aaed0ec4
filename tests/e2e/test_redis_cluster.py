"""Offload on a Redis Cluster of three masters and three replicas (no Docker).

The cluster is the session's (`tests/support/clusters.py`, fixture `redis_cluster`).
RabbitMQ is the machine's single node, in a vhost of the module's own (so `ai.dead`
holds only this module's letters). The RabbitMQ cluster (`rabbit_cluster`) is asked
for only by the reliability tests, which run after this module: asking for it here
would add its 16-30 s start to a run of this file alone.

One stack serves every test of the module: the gateway (with its admin API and a
short sweep), an `ai` worker, the notifier and a webhook receiver, all on the
cluster. The first test works as tenant `acme`, the others as `globex`, so that
test's tenant-wide events and listing hold only its own jobs.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_contracts import AiGenerateInput, AiGenerateRequest
from offload_runtime.keys import RedisKeys
from tests.support.clusters import RedisCluster as LocalRedisCluster
from tests.support.gateway import RunningGateway, ai_job, poll_job, running_gateway, submit_job
from tests.support.infra import Infra
from tests.support.notifier import (
    JobDriver,
    NotifierSpace,
    Receiver,
    RunningNotifier,
    running_notifier,
    sse,
    verify,
)
from tests.support.ops import ADMIN_KEY, admin_client
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.serving import serve
from tests.support.waiting import wait_until

JOBS = 40
"""Enough that every master holds some (16 shards over 3 masters: a miss is ~1 in 30,000)."""
OTHER = "globex"
"""The tenant of every test but the first."""
LONG = 32_768
"""Tokens of a generation slow enough to cancel: ~16 s at the sandbox's pace."""


@dataclass
class Stack:
    """The module's running services, all sharing one Redis prefix on the cluster."""

    gw: RunningGateway
    sandbox: RunningSandbox
    notifier: RunningNotifier
    space: NotifierSpace
    hooks: Receiver
    hooks_url: str


@pytest.fixture(scope="module")
async def stack(ops_infra: Infra, redis_cluster: LocalRedisCluster) -> AsyncIterator[Stack]:
    cluster_infra = replace(ops_infra, redis_url=redis_cluster.cluster_url)
    async with AsyncExitStack() as running:
        # A job's answer is as long as its max_tokens allows (512 unless asked):
        # a quarter of a second at 2,000 tokens/s, and a long one can be cancelled.
        sandbox = await running.enter_async_context(
            running_sandbox(
                sandbox_llm_ttft_ms=0,
                sandbox_llm_tokens_per_s=2_000,
                sandbox_llm_answer_tokens=LONG,
            )
        )
        gw = await running.enter_async_context(
            running_gateway(cluster_infra, admin_keys=ADMIN_KEY, sweep_after="300ms")
        )
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
        running.push_async_callback(worker.app.stop)
        notifier = await running.enter_async_context(
            running_notifier(space, sse_block_ms=100, sse_ping_s=0.2)
        )
        hooks = Receiver()
        hooks_url = await running.enter_async_context(serve(hooks.app))
        yield Stack(gw, sandbox, notifier, space, hooks, hooks_url)


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


async def sandbox_calls(sandbox: RunningSandbox, job_id: str) -> list[dict[str, Any]]:
    """The LLM calls the sandbox got for a job, oldest first."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url("/v1/sandbox/llm/calls"), params={"job": job_id})
    calls: list[dict[str, Any]] = answer.json()["calls"]
    return calls


async def test_jobs_run_list_and_stream_on_a_cluster_spread_over_every_master(
    stack: Stack,
) -> None:
    gw = stack.gw
    store = gw.deps.store
    async with (
        gw.client() as http,
        stack.notifier.client("acme") as events_http,
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
        recorded = {_event_id(data) for job in made for _, data in await store.events(job["id"])}
        # Resumed after the last event seen: the rest, each once, none again.
        async with sse(events_http, "/v1/events", last_event_id=first[-1].id) as resumed_stream:
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


async def test_a_webhook_is_delivered_signed(stack: Stack) -> None:
    async with stack.gw.client(OTHER) as http:
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "hook"}, webhook={"url": f"{stack.hooks_url}/done"}
        )
        [request] = await stack.hooks.wait_for("done", 1, timeout=30)
        job = (await http.get(f"/v1/jobs/{job_id}")).json()

    body = verify(request, await stack.space.secrets(OTHER))
    completed = json.loads((await stack.gw.deps.store.events(job_id))[-1][1])
    assert job["status"] == "completed"
    assert body == {
        "type": "ai.generate.completed",
        "timestamp": completed["at"],
        "data": completed,
    }
    assert body["data"]["job_id"] == job_id
    assert request.headers["webhook-id"] == completed["event_id"]


async def test_cancel_reaches_the_worker_and_stops_the_generation(stack: Stack) -> None:
    async with stack.gw.client(OTHER) as http:
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "A long story.", "max_tokens": LONG}
        )
        await wait_until(
            lambda: sandbox_calls(stack.sandbox, job_id),
            lambda calls: bool(calls) and calls[-1]["completion_tokens"] > 0,
            timeout=15,
            what="the generation streaming",
            interval=0.02,
        )

        cancelled = await http.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        # The gateway tells the worker over Redis pub/sub; the worker cuts the stream.
        calls = await wait_until(
            lambda: sandbox_calls(stack.sandbox, job_id),
            lambda calls: calls[-1]["outcome"] != "streaming",
            timeout=5,
            what="the stream closed",
            interval=0.02,
        )
        job = (await http.get(f"/v1/jobs/{job_id}")).json()

    assert job["status"] == "cancelled"
    assert [call["outcome"] for call in calls] == ["disconnected"]
    assert calls[-1]["completion_tokens"] < LONG


async def test_the_same_idempotency_key_gives_the_same_job(stack: Stack) -> None:
    key = {"Idempotency-Key": f"cluster-{uuid.uuid4().hex}"}
    async with stack.gw.client(OTHER) as http:
        first = await http.post("/v1/jobs", json=ai_job("once"), headers=key)
        again = await http.post("/v1/jobs", json=ai_job("once"), headers=key)
        assert first.status_code == 202, first.text
        job = await poll_job(http, first.json()["id"])

    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert job["status"] == "completed"
    assert len(await sandbox_calls(stack.sandbox, job["id"])) == 1


async def test_the_sweep_republishes_a_job_whose_publish_was_lost(stack: Stack) -> None:
    request = AiGenerateRequest(
        id=uuid.uuid4().hex,
        tenant=OTHER,
        max_attempts=3,
        created_at=datetime.now(UTC),
        input=AiGenerateInput(prompt="published never"),
    )
    # What a gateway that died between recording and publishing leaves behind.
    assert (await stack.gw.deps.store.create(request)).applied

    async with stack.gw.client(OTHER) as http:
        job = await poll_job(http, request.id, timeout=15)

    assert job["status"] == "completed" and job["attempt"] == 1
    assert len(await sandbox_calls(stack.sandbox, request.id)) == 1


async def test_a_dead_letter_replayed_through_the_admin_api_completes(stack: Stack) -> None:
    async with stack.gw.client(OTHER) as http, admin_client(stack.gw.base_url) as admin:
        # The provider fails the job's first three calls: every attempt, so it fails for good.
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "dead, then alive", "model": "sandbox-fail-3"}
        )
        failed = await poll_job(http, job_id, timeout=15)
        assert failed["status"] == "failed" and failed["attempt"] == 3, failed
        letters = await wait_until(
            lambda: _dead_letters(admin),
            lambda items: [item["job_id"] for item in items] == [job_id],
            timeout=10,
            what="the job in ai.dead",
        )
        assert letters[0]["reason"] == "failed"

        answer = await admin.post(
            "/v1/admin/dead-letters/ai.dead/replay", json={"job_ids": [job_id]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["replayed"] == [job_id]
        job = await poll_job(http, job_id, timeout=15)
        assert await _dead_letters(admin) == []

    assert job["status"] == "completed" and job["attempt"] == 1, job
    calls = await sandbox_calls(stack.sandbox, job_id)
    assert [call["outcome"] for call in calls] == ["failed"] * 3 + ["completed"]


async def _dead_letters(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await admin.get("/v1/admin/dead-letters/ai.dead")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def _event_id(data: str) -> str:
    event_id: str = json.loads(data)["event_id"]
    return event_id
