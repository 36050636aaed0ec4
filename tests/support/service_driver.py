"""Drive a real worker service (its own `build_app`) through the real broker and Redis.

`ServiceDriver` plays the gateway's part: it records a job as `waiting`, then
publishes its request to the `jobs` exchange with the job type as routing key.
Each driver works under its own Redis key prefix inside the run's vhost, and
hands out the settings values a service's `build_app` needs to join it.
"""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from offload_contracts import POLICIES, topology
from offload_contracts.jobs import REQUEST_MODELS, JobRequestBase
from offload_runtime.store import new_id
from tests.support.infra import Infra
from tests.support.rig import JobRig
from tests.support.waiting import wait_until


class ServiceDriver(JobRig):
    """Submit jobs of one service's types and watch them, as the gateway and a client would."""

    def __init__(self, infra: Infra, service: str) -> None:
        self.infra = infra
        self.service = service
        self.redis_prefix = f"{infra.redis_prefix}{service}-{uuid.uuid4().hex[:8]}:"
        super().__init__(
            rabbitmq_url=infra.rabbitmq_url,
            redis_url=infra.redis_url,
            redis_prefix=self.redis_prefix,
            name=f"{service}-test-driver",
        )

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
        return await self.submit_request(request, routing_key=job_type)

    async def take_dead(self, job_id: str, timeout: float = 10) -> AbstractIncomingMessage:
        """The service's dead letter for `job_id`; others found on the way are dropped.

        The dead queue is shared by every test of the run, and a test only
        looks for its own job.
        """
        connection = await aio_pika.connect(self.infra.rabbitmq_url)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.dead_queue(self.service), ensure=False)

            async def take() -> AbstractIncomingMessage | None:
                # Letters of other jobs met on the way are taken and dropped.
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    if _job_id_of(message.body) == job_id:
                        return message
                return None

            found = await wait_until(
                take,
                lambda found: found is not None,
                timeout=timeout,
                what=f"a dead letter for job {job_id} in {self.service}.dead",
                interval=0.02,
            )
            assert found is not None
            return found
        finally:
            await connection.close()


def _job_id_of(body: bytes) -> object:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None
