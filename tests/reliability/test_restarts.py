"""RabbitMQ and Redis restarts under load: services recover by themselves, nothing is lost.

Each test starts its own server on other ports (tests.support.dedicated), so
the machine's shared RabbitMQ and Redis stay up.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from offload_contracts import JobStatus
from tests.reliability.outcomes import settle
from tests.support.dedicated import DedicatedRabbit, DedicatedRedis
from tests.support.harness import Harness
from tests.support.infra import Infra
from tests.support.waiting import wait_until


@pytest.fixture
def redis_server() -> Iterator[DedicatedRedis]:
    server = DedicatedRedis()
    server.start()
    yield server
    server.stop()


async def _until(harness: Harness, ids: list[str], status: JobStatus, count: int) -> None:
    async def reached() -> int:
        records = [await harness.store.get(i) for i in ids]
        return sum(1 for r in records if r and r.status == status)

    await wait_until(reached, lambda n: n >= count, timeout=30, what=f"{count} jobs {status}")


@pytest.fixture
async def rabbit_harness(infra: Infra, rabbit: DedicatedRabbit) -> AsyncIterator[Harness]:
    h = Harness(infra, rabbitmq_url=rabbit.url, concurrency=10)
    await h.open()
    yield h
    await h.close()


async def test_workers_reconnect_by_themselves_after_rabbitmq_restarts(
    rabbit: DedicatedRabbit, rabbit_harness: Harness
) -> None:
    harness = rabbit_harness
    ids = await harness.submit_many(60, sleep_s=0.1)
    worker = harness.worker_process().start()
    await _until(harness, ids, JobStatus.COMPLETED, 15)

    await asyncio.to_thread(rabbit.stop_app)  # every connection drops, mid-batch
    await asyncio.sleep(2)
    await asyncio.to_thread(rabbit.start_app)

    outcome = await settle(
        harness.store,
        ids,
        scenario="RabbitMQ restarted under load (workers)",
        load="60 jobs of 0.1 s, broker down 2 s mid-batch",
    )
    outcome.assert_nothing_lost_or_duplicated()
    assert worker.process is not None and worker.process.poll() is None, "worker must not exit"


async def test_workers_recover_after_redis_is_killed_and_restarted(
    infra: Infra, redis_server: DedicatedRedis
) -> None:
    harness = Harness(infra, redis_url=redis_server.url, concurrency=10)
    await harness.open()
    try:
        ids = await harness.submit_many(60, sleep_s=0.1)
        worker = harness.worker_process().start()
        await _until(harness, ids, JobStatus.COMPLETED, 15)

        await asyncio.to_thread(redis_server.kill)  # SIGKILL; AOF (fsync always) keeps state
        await asyncio.sleep(2)
        await asyncio.to_thread(redis_server.start)

        outcome = await settle(
            harness.store,
            ids,
            scenario="Redis killed and restarted (workers, AOF)",
            load="60 jobs of 0.1 s, Redis down 2 s mid-batch",
        )
        outcome.assert_nothing_lost_or_duplicated()
        assert worker.process is not None and worker.process.poll() is None
    finally:
        await harness.close()
