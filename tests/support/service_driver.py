"""Drive a real worker service (its own `build_app`) through the real broker and Redis.

`ServiceDriver` plays the gateway's part: it records a job as `waiting`, then
publishes its request to the `jobs` exchange with the job type as routing key.
Each driver works under its own Redis key prefix inside the run's vhost, and
hands out the settings values a service's `build_app` needs to join it.
"""

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from offload_contracts import POLICIES, JobEvent, JobStatus, topology
from offload_contracts.jobs import REQUEST_MODELS, JobRequestBase
from offload_runtime.broker import make_broker, publish_confirmed
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobRecord, JobStore, new_id
from tests.support.harness import job_events, wait_for_status
from tests.support.infra import Infra

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class ServiceDriver:
    """Submit jobs of one service's types and watch them, as the gateway and a client would."""

    def __init__(self, infra: Infra, service: str) -> None:
        self.infra = infra
        self.service = service
        self.redis_prefix = f"{infra.redis_prefix}{service}-{uuid.uuid4().hex[:8]}:"
        self.keys = RedisKeys(self.redis_prefix)
        self.redis = connect_redis(infra.redis_url)
        self.store = JobStore(self.redis, self.keys, retention_s=3600, events_maxlen=1000)
        self.broker = make_broker(infra.rabbitmq_url, service=f"{service}-test-driver")

    def worker_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings values for the service under test: this run's broker and prefix, ms tiers."""
        return {
            "rabbitmq_url": self.infra.rabbitmq_url,
            "redis_url": self.infra.redis_url,
            "redis_prefix": self.redis_prefix,
            "retry_tiers": "30ms,60ms",
            "shutdown_grace_s": 1,
            "log_level": "warning",
            **overrides,
        }

    async def open(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        await self.broker.stop()
        await self.store.aclose()

    async def submit(self, job_type: str, max_attempts: int | None = None, **spec: Any) -> Any:
        """Record the job `waiting`, then publish its request with a confirm."""
        model: type[JobRequestBase] = REQUEST_MODELS[job_type]
        request = model.model_validate(
            {
                "id": new_id(),
                "tenant": "acme",
                "max_attempts": max_attempts or POLICIES[job_type].max_attempts,
                "created_at": datetime.now(UTC),
                "input": spec,
            }
        )
        created = await self.store.create(request)
        assert created.applied
        await publish_confirmed(
            self.broker,
            request.model_dump_json().encode(),
            exchange=topology.JOBS_EXCHANGE,
            routing_key=job_type,
        )
        return request

    async def wait_status(
        self, job_id: str, statuses: Iterable[JobStatus] = TERMINAL, timeout: float = 15
    ) -> JobRecord:
        return await wait_for_status(self.store, job_id, statuses, timeout)

    async def events(self, job_id: str) -> list[JobEvent]:
        return await job_events(self.store, job_id)

    async def take_dead(self, job_id: str, timeout: float = 10) -> AbstractIncomingMessage:
        """The service's dead letter for `job_id`; others found on the way are dropped.

        The dead queue is shared by every test of the run, and a test only
        looks for its own job.
        """
        connection = await aio_pika.connect(self.infra.rabbitmq_url)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.dead_queue(self.service), ensure=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.02)
                elif _job_id_of(message.body) == job_id:
                    return message
        finally:
            await connection.close()
        raise AssertionError(f"no dead letter for job {job_id} in {self.service}.dead")


def _job_id_of(body: bytes) -> object:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None
