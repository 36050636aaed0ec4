"""The sweep while no worker consumes: ever fewer copies of a job, and each job done once.

A job the gateway recorded but no worker started is published again by the
sweep. While the workers are away its copies pile up in the work queue, so the
wait between two copies doubles (from `sweep_after` up to `sweep_backoff_max`),
and that wait is kept in Redis, where every gateway replica and the next
gateway process find it.
"""

import asyncio
import itertools
import json
import time
from collections import defaultdict
from typing import Any

import aio_pika
import httpx
from prometheus_client import REGISTRY

from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_contracts import EventKind, topology
from tests.support.gateway import ai_job, poll_job, running_gateway
from tests.support.harness import job_events
from tests.support.infra import Infra
from tests.support.notifier import until
from tests.support.sandbox import running_sandbox

AI_JOBS = topology.work_queue("ai")
REPUBLISHED = "offload_gateway_sweep_republished_total"
"""Counted in this process's registry: the gateways of these tests run in it."""
FAST_SWEEP = {"sweep_after": "100ms", "sweep_interval": "20ms"}
JITTER_S = 0.05
"""How much sooner than its wait a copy may come: the publish and delivery of the one before."""


def waits(first_s: float, longest_s: float, count: int) -> list[float]:
    """The backoff's waits between copies: doubling from `first_s`, at most `longest_s`."""
    return [min(first_s * 2**n, longest_s) for n in range(count)]


class Copies:
    """When each copy of each job reached `ai.jobs` (monotonic seconds), by job id.

    A consumer that never acknowledges: no job starts, as with no worker at all.
    The queue is emptied before and after. Start it once a gateway has declared
    the queue.
    """

    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self._connection: aio_pika.abc.AbstractConnection | None = None

    def of(self, job_id: str) -> list[float]:
        return list(self.arrivals[job_id])

    async def watch(self) -> "Copies":
        await purge(self.infra, AI_JOBS)
        self._connection = await aio_pika.connect(self.infra.rabbitmq_url)
        queue = await (await self._connection.channel()).get_queue(AI_JOBS, ensure=False)
        await queue.consume(self._arrived)
        return self

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()  # the copies go back to the queue unacknowledged
            await purge(self.infra, AI_JOBS)

    async def __aenter__(self) -> "Copies":
        return await self.watch()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _arrived(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.arrivals[json.loads(message.body)["id"]].append(time.monotonic())


async def purge(infra: Infra, name: str) -> None:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        queue = await (await connection.channel()).get_queue(name, ensure=False)
        await queue.purge()
    finally:
        await connection.close()


async def depth(infra: Infra, name: str) -> int:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def submit(http: httpx.AsyncClient, prompt: str) -> str:
    answer = await http.post("/v1/jobs", json=ai_job(prompt))
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_with_no_worker_the_copies_of_a_job_come_ever_less_often_up_to_a_cap(
    infra: Infra,
) -> None:
    # Republished at every deadline, the job would gain a copy every 100 ms: 40 in 4 s.
    before = REGISTRY.get_sample_value(REPUBLISHED) or 0
    async with (
        running_gateway(infra, **FAST_SWEEP, sweep_backoff_max="800ms") as gw,
        gw.client() as http,
        Copies(infra) as copies,
    ):
        job_id = await submit(http, "nobody takes this")
        await asyncio.sleep(4)
        republished = int((REGISTRY.get_sample_value(REPUBLISHED) or 0) - before)
        # The copies the sweep had counted by then (the first is the submit's own publish).
        await until(lambda: len(copies.of(job_id)) >= 1 + republished, 5, "the counted copies")
        times = copies.of(job_id)[: 1 + republished]

    between = gaps(times)
    expected = waits(0.1, 0.8, len(between))  # 0.1, 0.2, 0.4, 0.8, 0.8, ...
    shown = [round(gap, 3) for gap in between]
    print(f"\nwaits between the copies of one job over 4 s with no worker: {shown}")
    assert all(gap >= want - JITTER_S for gap, want in zip(between, expected, strict=True)), shown
    # So copies grow with the logarithm of the outage, then one per cap (4 s hold 7:
    # at 0.1, 0.3, 0.7, 1.5, 2.3, 3.1, 3.9 s), and the job is never given up on.
    assert len(between) >= 4, shown
    assert max(between) < 0.8 + 1.0, shown  # the cap, plus what a slow pass may add


async def test_the_backoff_is_kept_across_a_gateway_restart_and_shared_by_replicas(
    infra: Infra,
) -> None:
    copies = Copies(infra)
    try:
        async with (
            running_gateway(infra, **FAST_SWEEP, sweep_backoff_max="10s") as first,
            first.client() as http,
        ):
            await copies.watch()
            job_id = await submit(http, "nobody takes this either")
            # Published, then again after 0.1, 0.2 and 0.4 s.
            await until(lambda: len(copies.of(job_id)) >= 4, 5, "three republications")
        prefix = first.settings.redis_prefix
        # The next gateway process, as two replicas over the same Redis.
        async with (
            running_gateway(infra, **FAST_SWEEP, sweep_backoff_max="10s", redis_prefix=prefix),
            running_gateway(infra, **FAST_SWEEP, sweep_backoff_max="10s", redis_prefix=prefix),
        ):
            await until(lambda: len(copies.of(job_id)) >= 6, 10, "two more republications")
        times = copies.of(job_id)
    finally:
        await copies.close()

    between = gaps(times)
    shown = [round(gap, 3) for gap in between]
    # The restart did not start the backoff over (a wait of 0.1 s), and two replicas
    # sweeping did not republish twice as often: the waits went on doubling.
    expected = waits(0.1, 10, len(between))
    assert all(gap >= want - JITTER_S for gap, want in zip(between, expected, strict=True)), shown


async def test_once_a_worker_consumes_every_job_completes_exactly_once(infra: Infra) -> None:
    async with (
        running_sandbox(sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=2000) as sandbox,
        running_gateway(infra, **FAST_SWEEP, sweep_backoff_max="400ms") as gw,
        gw.client() as http,
    ):
        await purge(infra, AI_JOBS)
        job_ids = [await submit(http, f"waiting {n}") for n in range(5)]
        # No worker yet: the copies pile up (each job is published again after 0.1,
        # 0.3, 0.7, 1.1 s, ...); wait for two more of each.
        await until(lambda: _holds(infra, 5 * 3), 10, "copies to pile up in ai.jobs")

        settings: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": gw.settings.redis_prefix,
            "retry_tiers": gw.settings.retry_tiers,
            "shutdown_grace_s": 1,
            "log_level": "warning",
            "llm_base_url": sandbox.llm_base_url,
        }
        worker = build_ai(AiSettings(**settings))
        await worker.app.start()
        try:
            jobs = [await poll_job(http, job_id, timeout=30) for job_id in job_ids]
            # Every copy is taken off the queue; only one per job ran.
            await until(lambda: _holds(infra, 0, at_most=True), 15, "ai.jobs to drain")
        finally:
            await worker.app.stop()

        async with httpx.AsyncClient(base_url=sandbox.base_url) as provider:
            for job in jobs:
                assert job["status"] == "completed" and job["attempt"] == 1, job
                kinds = [event.event for event in await job_events(gw.deps.store, job["id"])]
                assert kinds.count(EventKind.STARTED) == 1, kinds
                assert kinds.count(EventKind.COMPLETED) == 1, kinds
                calls = (
                    await provider.get("/v1/sandbox/llm/calls", params={"job": job["id"]})
                ).json()["calls"]
                assert len(calls) == 1, calls
        unstarted = [gw.keys.unstarted(shard) for shard in gw.keys.all_shards]
        assert sum([await gw.deps.redis.zcard(key) for key in unstarted]) == 0


async def _holds(infra: Infra, count: int, *, at_most: bool = False) -> bool:
    """Whether `ai.jobs` holds at least (or at most) `count` messages."""
    held = await depth(infra, AI_JOBS)
    return held <= count if at_most else held >= count
