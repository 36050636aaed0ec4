"""`OFFLOAD_REDIS_WAIT_REPLICAS`: a 202 only once the job's record is on a replica.

Redis replicates asynchronously: a job recorded on its master and answered 202
could vanish if the master died before sending it on. With the setting, the
gateway waits (`WAIT`) for the replicas; when they do not answer in time
(here: stopped with SIGSTOP, as a stalled replica would be) the client gets a
503 with `Retry-After` and no job of it is left to run.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from redis.exceptions import MovedError

from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_contracts import JobStatus
from offload_runtime.keys import RedisKeys
from tests.support.clusters import RedisCluster as LocalRedisCluster
from tests.support.gateway import RunningGateway, ai_job, running_gateway
from tests.support.infra import Infra
from tests.support.sandbox import running_sandbox
from tests.support.waiting import wait_until

TIMEOUT_MS = 300


@pytest.fixture
async def waiting_gateway(
    infra: Infra, redis_cluster: LocalRedisCluster
) -> AsyncIterator[RunningGateway]:
    cluster_infra = replace(infra, redis_url=redis_cluster.cluster_url)
    async with running_gateway(
        cluster_infra, redis_wait_replicas=1, redis_wait_timeout_ms=TIMEOUT_MS
    ) as gw:
        yield gw


async def _on_a_replica(cluster: LocalRedisCluster, key: str) -> bool:
    """Whether the replica of the key's master holds it, read from the replica itself
    (`READONLY`; a replica of another master answers MOVED)."""
    held = False
    for port in cluster.replicas():
        plain = aioredis.Redis(port=port, decode_responses=True)
        try:
            await plain.execute_command("READONLY")
            held = held or bool(await plain.exists(key))
        except MovedError:
            pass
        finally:
            await plain.aclose()
    return held


async def test_a_202_comes_once_a_replica_holds_the_job(
    waiting_gateway: RunningGateway, redis_cluster: LocalRedisCluster
) -> None:
    gw = waiting_gateway
    async with gw.client() as http:
        answer = await http.post("/v1/jobs", json=ai_job("replicated"))
        assert answer.status_code == 202, answer.text
        key = RedisKeys(gw.settings.redis_prefix).job(answer.json()["id"])
        assert await _on_a_replica(redis_cluster, key)


async def test_replicas_that_do_not_acknowledge_in_time_give_a_503_and_no_job(
    waiting_gateway: RunningGateway, redis_cluster: LocalRedisCluster
) -> None:
    gw = waiting_gateway
    replicas = redis_cluster.replicas()
    assert len(replicas) == 3
    async with gw.client() as http:
        for port in replicas:
            redis_cluster.pause(port)
        try:
            began = asyncio.get_running_loop().time()
            answer = await http.post("/v1/jobs", json=ai_job("not replicated"))
            took = asyncio.get_running_loop().time() - began
        finally:
            for port in replicas:
                redis_cluster.resume(port)
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == str(gw.settings.unavailable_retry_after_s)
        assert "did not replicate the job in time" in answer.json()["detail"]
        assert "not accepted" in answer.json()["detail"]
        assert TIMEOUT_MS / 1000 <= took < 5
        # Nothing of it is left to run: the job it recorded on the master is failed.
        listed = (await http.get("/v1/jobs")).json()["items"]
        assert [(job["status"], job["error"]["type"]) for job in listed] == [
            ("failed", "not_accepted")
        ]


async def test_a_worker_goes_on_only_once_replicas_hold_its_state_change(
    waiting_gateway: RunningGateway, redis_cluster: LocalRedisCluster
) -> None:
    gw = waiting_gateway
    store = gw.deps.store
    async with running_sandbox(sandbox_llm_ttft_ms=0) as sandbox, gw.client() as http:
        answer = await http.post("/v1/jobs", json=ai_job("held"))
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        worker = build_ai(
            AiSettings(
                rabbitmq_url=gw.settings.rabbitmq_url,
                redis_url=gw.settings.redis_url,
                redis_prefix=gw.settings.redis_prefix,
                redis_wait_replicas=1,
                redis_wait_timeout_ms=TIMEOUT_MS,
                llm_base_url=sandbox.llm_base_url,
                shutdown_grace_s=1,
                log_level="warning",
            )
        )
        replicas = redis_cluster.replicas()
        for port in replicas:
            redis_cluster.pause(port)
        try:
            await worker.app.start()
            # The worker's `start` is made on the master, and not confirmed: it holds the
            # job there (a sandbox reply takes milliseconds) until the replicas answer.
            await wait_until(
                lambda: store.get(job_id),
                lambda job: job is not None and job.status is JobStatus.ACTIVE,
                timeout=15,
                what="the job started on the master",
            )
            await asyncio.sleep(2 * TIMEOUT_MS / 1000)  # two unconfirmed tries
            held = await store.get(job_id)
        finally:
            for port in replicas:
                redis_cluster.resume(port)
        try:
            assert held is not None and held.status is JobStatus.ACTIVE
            done = await wait_until(
                lambda: store.get(job_id),
                lambda job: job is not None and job.status is JobStatus.COMPLETED,
                timeout=30,
                what="the job completed once the replicas answered",
            )
        finally:
            await worker.app.stop()
    assert done is not None
    kinds = [json.loads(data)["event"] for _, data in await store.events(job_id)]
    assert kinds.count("started") == 1 and kinds.count("completed") == 1, kinds
