"""Backpressure over HTTP: the per-tenant rate limit and the per-queue depth limit (429)."""

import asyncio
import math
import time

import aio_pika
import httpx

from offload_contracts import topology
from tests.support.gateway import INPUTS, ai_job, assert_problem, running_gateway
from tests.support.infra import Infra
from tests.support.waiting import wait_until


async def queue_depths(infra: Infra, *services: str) -> dict[str, int]:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        depths = {}
        for service in services:
            queue = await channel.declare_queue(topology.work_queue(service), passive=True)
            depths[service] = int(queue.declaration_result.message_count or 0)
        return depths
    finally:
        await connection.close()


async def test_a_tenant_over_its_rate_gets_429_with_retry_after(infra: Infra) -> None:
    async with running_gateway(infra, rate_limit_per_s=5) as gw:
        async with gw.client("acme") as http:
            began = time.time()
            answers = await asyncio.gather(
                *(http.post("/v1/jobs", json=ai_job()) for _ in range(20))
            )
            ended = time.time()
        async with gw.client("globex") as other:
            other_tenant = await other.post("/v1/jobs", json=ai_job())

        accepted = [a for a in answers if a.status_code == 202]
        limited = [a for a in answers if a.status_code == 429]
        assert len(accepted) + len(limited) == 20
        windows = math.floor(ended) - math.floor(began) + 1
        assert 5 <= len(accepted) <= 5 * windows
        problem = assert_problem(limited[0], 429)
        assert "too many" in problem["detail"]
        assert limited[0].headers["retry-after"] == "1"
        # The limit is per tenant.
        assert other_tenant.status_code == 202
        # Refused submissions recorded nothing.
        async with gw.client("acme") as http:
            listed = (await http.get("/v1/jobs", params={"limit": 100})).json()["items"]
        assert len(listed) == len(accepted)


async def test_a_full_queue_gets_429_and_other_queues_still_accept(infra: Infra) -> None:
    before = await queue_depths(infra, "video", "ai")
    limit = max(before.values()) + 2
    async with running_gateway(infra, queue_depth_limit=limit) as gw, gw.client() as http:
        video = {"type": "video.generate", "input": INPUTS["video.generate"]}
        accepted = 0

        async def submit_video() -> httpx.Response:
            nonlocal accepted
            answer = await http.post("/v1/jobs", json=video)
            if answer.status_code != 429:
                assert answer.status_code == 202, answer.text
                accepted += 1
            return answer

        refused = await wait_until(
            submit_video,
            lambda answer: answer.status_code == 429,
            timeout=20,
            what="the video queue reported full",
            interval=0.02,
            describe=lambda answer: answer.text,
        )
        problem = assert_problem(refused, 429)
        assert "video.generate queue is full" in problem["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert (await queue_depths(infra, "video"))["video"] >= limit
        # The depth is read in the background, so a few submissions may pass the limit
        # before the next read; never more than a refresh period's worth.
        assert accepted <= limit - before["video"] + 10
        assert (await http.post("/v1/jobs", json=ai_job())).status_code == 202
