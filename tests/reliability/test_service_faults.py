"""Faults around the gateway, with every part a real process: nothing accepted is lost."""

import asyncio
import time

import httpx

from offload_contracts import JobStatus
from tests.reliability.outcomes import settle
from tests.support.dedicated import DedicatedRabbit, DedicatedRedis
from tests.support.infra import Infra
from tests.support.stack import running_stack

DONE = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


async def test_kill_9_of_the_gateway_during_a_burst_loses_no_accepted_job(infra: Infra) -> None:
    async with running_stack(infra) as stack:
        accepted: list[str] = []

        async def submit() -> None:
            try:
                answer = await stack.http.post("/v1/jobs", json=stack.ai_job())
            except httpx.TransportError:
                return  # the gateway died under this request: not accepted
            if answer.status_code == 202:
                accepted.append(answer.json()["id"])

        burst = [asyncio.create_task(submit()) for _ in range(300)]
        while len(accepted) < 50:
            await asyncio.sleep(0.002)
        stack.processes["gateway"].kill()
        await asyncio.gather(*burst)
        assert 50 <= len(accepted) < 300

        # A new gateway; its sweep republishes whatever the dead one recorded but
        # never published.
        stack.start_gateway()
        await stack.wait_ready(stack.gateway_url, "/readyz")
        outcome = await settle(
            stack.store,
            accepted,
            scenario="kill -9 of the gateway during a burst",
            load=f"300 concurrent submits, killed after 50 accepted ({len(accepted)} got a 202)",
        )
        stack.assert_settled(outcome)
        # Nothing is left behind: every job the store knows for the tenant ends.
        indexes = [stack.keys.tenant_jobs("acme", shard) for shard in stack.keys.all_shards]
        listed = [job_id for index in indexes for job_id in await stack.redis.zrange(index, 0, -1)]
        await stack.wait_jobs(list(listed), DONE)


async def test_while_rabbitmq_is_down_the_gateway_answers_503_fast_and_recovers(
    infra: Infra, rabbit: DedicatedRabbit
) -> None:
    async with running_stack(infra, rabbitmq_url=rabbit.url, publish_timeout_s=2) as stack:
        first = await stack.http.post("/v1/jobs", json=stack.ai_job())
        assert first.status_code == 202, first.text

        await asyncio.to_thread(rabbit.stop_app)
        try:
            began = time.monotonic()
            refused = await stack.http.post("/v1/jobs", json=stack.ai_job())
            took = time.monotonic() - began
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert took < 2 + 1.5, f"a 503 took {took:.1f}s"
            ready = await stack.http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["broker"] is False
        finally:
            await asyncio.to_thread(rabbit.start_app)

        # Gateway and worker reconnect by themselves; no process was restarted.
        await stack.wait_ready(stack.gateway_url, "/readyz")
        second = await stack.http.post("/v1/jobs", json=stack.ai_job())
        assert second.status_code == 202, second.text
        outcome = await settle(
            stack.store,
            [first.json()["id"], second.json()["id"]],
            scenario="RabbitMQ down under the gateway",
            load=f"submits while down: 503 in {took:.2f} s; readiness false; recovered",
        )
        stack.assert_settled(outcome)
        assert all(p.process and p.process.poll() is None for p in stack.processes.values())


async def test_redis_killed_and_restarted_the_services_recover(infra: Infra) -> None:
    redis_server = DedicatedRedis()
    redis_server.start()
    try:
        async with running_stack(infra, redis_url=redis_server.url) as stack:
            before = [
                (await stack.http.post("/v1/jobs", json=stack.ai_job())).json()["id"]
                for _ in range(5)
            ]

            await asyncio.to_thread(redis_server.kill)
            began = time.monotonic()
            during = await stack.http.post("/v1/jobs", json=stack.ai_job())
            took = time.monotonic() - began
            assert during.status_code == 503, during.text  # an honest "try later", never a 500
            assert int(during.headers["Retry-After"]) > 0
            assert took < 3, f"the 503 took {took:.1f}s"
            await asyncio.sleep(1)
            await asyncio.to_thread(redis_server.start)

            await stack.wait_ready(stack.gateway_url, "/readyz")
            after = await stack.http.post("/v1/jobs", json=stack.ai_job())
            assert after.status_code == 202, after.text
            outcome = await settle(
                stack.store,
                [*before, after.json()["id"]],
                scenario="Redis killed and restarted (gateway + worker)",
                load=f"submit while down: 503 in {took:.2f} s; 6 jobs accepted around it",
            )
            stack.assert_settled(outcome)
    finally:
        redis_server.stop()


async def test_redis_killed_three_times_under_a_stream_of_submissions(infra: Infra) -> None:
    redis_server = DedicatedRedis()
    redis_server.start()
    try:
        async with running_stack(infra, redis_url=redis_server.url) as stack:
            accepted: list[str] = []
            unavailable = 0
            stop = asyncio.Event()

            async def submitter() -> None:
                nonlocal unavailable
                while not stop.is_set():
                    answer = await stack.http.post("/v1/jobs", json=stack.ai_job())
                    if answer.status_code == 202:
                        accepted.append(answer.json()["id"])
                    elif answer.status_code == 429:  # the tenant's rate: back off
                        await asyncio.sleep(0.2)
                    else:
                        assert answer.status_code == 503, answer.text  # never a 500
                        unavailable += 1
                    await asyncio.sleep(0.01)

            submitters = [asyncio.create_task(submitter()) for _ in range(4)]
            for _ in range(3):
                await asyncio.sleep(0.7)
                await asyncio.to_thread(redis_server.kill)
                await asyncio.sleep(0.4)
                await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*submitters)
            assert unavailable > 0  # the kills did land on submissions

            outcome = await settle(
                stack.store,
                accepted,
                scenario="Redis killed 3 times under a stream of submissions (gateway + worker)",
                load=f"4 submitters for 3.8 s, Redis down 0.4 s three times: "
                f"{unavailable} answered 503, {len(accepted)} accepted",
            )
            stack.assert_settled(outcome)
    finally:
        redis_server.stop()


async def test_overload_gets_429_at_the_queue_depth_limit_never_a_5xx(infra: Infra) -> None:
    async with running_stack(infra, queue_depth_limit=20, queue_depth_refresh="50ms") as stack:
        stack.processes["ai"].stop()  # nobody drains the queue
        gateway_pid = stack.processes["gateway"].pid
        rss_before = _rss_kb(gateway_pid)
        statuses: list[int] = []
        accepted_ids: list[str] = []
        for _ in range(10):
            answers = await asyncio.gather(
                *(stack.http.post("/v1/jobs", json=stack.ai_job()) for _ in range(50))
            )
            statuses += [a.status_code for a in answers]
            accepted_ids += [a.json()["id"] for a in answers if a.status_code == 202]
            for answer in answers:
                if answer.status_code == 429:
                    assert int(answer.headers["Retry-After"]) >= 1
            await asyncio.sleep(0.1)

        assert set(statuses) <= {202, 429}, sorted(set(statuses))
        accepted = statuses.count(202)
        # The depth is read every 50 ms, so a burst can overshoot by what fits in one read.
        assert 20 <= accepted <= 20 + 50, accepted
        assert statuses.count(429) >= 400
        growth_mb = (_rss_kb(gateway_pid) - rss_before) / 1024
        assert growth_mb < 50  # memory stays bounded

        # Every submission that was accepted completes once a worker drains the queue.
        stack.start("ai", "offload_ai")
        outcome = await settle(
            stack.store,
            accepted_ids,
            scenario="overload: submits past the queue depth limit (20)",
            load=f"500 submits in 10 bursts of 50 with no worker: {statuses.count(429)} got 429, "
            f"none 5xx, gateway RSS +{growth_mb:.1f} MB; then a worker drains",
        )
        stack.assert_settled(outcome)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
