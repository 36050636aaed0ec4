"""Jobs recorded and published straight to the queue, as the gateway would, for worker benches.

A bench that measures a worker leaves the gateway out, so its figures are the
worker's own; the messages are exactly what the gateway publishes (the job's
request envelope, persistent, confirmed, routing key = job type).
"""

import asyncio
import time
from collections.abc import Sequence

import aio_pika

from offload_contracts import JobRequestBase, topology
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def job_store(redis_url: str, prefix: str) -> JobStore:
    return JobStore(connect_redis(redis_url), RedisKeys(prefix), retention_s=3600)


async def record_and_publish(
    rabbitmq_url: str, store: JobStore, requests: Sequence[JobRequestBase]
) -> None:
    """`JobStore.create` every job, then publish them all with confirms awaited together."""
    await asyncio.gather(*(store.create(r) for r in requests))
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.JOBS_EXCHANGE)
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        r.model_dump_json().encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=r.type,  # type: ignore[attr-defined]
                )
                for r in requests
            )
        )
    finally:
        await connection.close()


async def statuses(store: JobStore, ids: Sequence[str]) -> dict[str, str]:
    """Each job's status, read in one pipeline."""
    found = await store.statuses(ids)
    return {job_id: str(found[job_id]) for job_id in ids}


async def wait_finished(
    store: JobStore, ids: Sequence[str], timeout_s: float, poll_s: float = 0.1
) -> dict[str, float]:
    """Wait until every job is terminal; when each was first seen terminal (perf_counter)."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, float] = {}
    left = list(ids)
    while left:
        found = await statuses(store, left)
        now = time.perf_counter()
        for job_id, status in found.items():
            if status in TERMINAL:
                done[job_id] = now
        left = [job_id for job_id in left if job_id not in done]
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} of {len(ids)} jobs unfinished after {timeout_s:g}s")
        if left:
            await asyncio.sleep(poll_s)
    return done
