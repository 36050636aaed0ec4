"""A worker as its `build_app` builds it, on FastStream's test broker instead of RabbitMQ.

    rig = ComponentRig(build_app(settings, deps), service="ai")
    async with TestRabbitBroker(rig.worker.broker):
        request = await rig.submit(request)      # the handler runs inline, on publish
        record = await rig.store.get(request.id)

For handler logic (decode, call the domain, record the result) the real
broker adds nothing; the test broker emulates no TTL, dead-lettering or
redelivery, so what those do is tested against the real RabbitMQ. The job
store is the real Redis, under the worker's own prefix.
"""

from typing import Any, TypeVar

from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

from offload_contracts import JobRequestBase, topology
from offload_runtime.broker import work_queue
from offload_runtime.store import JobStore
from offload_runtime.worker import Worker

Request = TypeVar("Request", bound=JobRequestBase)


async def _passthrough(message: Any) -> Any:
    return message


class ComponentRig:
    """Submits requests to the worker and keeps what it publishes: retries and dead letters."""

    def __init__(self, worker: Worker, *, service: str) -> None:
        self.worker = worker
        self.service = service
        self.store: JobStore = worker.store
        self.retried: list[Any] = []
        """Next attempts sent to the first retry tier (a transient failure without retry-after)."""
        self.dead: list[Any] = []
        """Messages parked in the service's dead-letter queue."""
        broker = worker.broker
        tier = worker.settings.tiers[0]

        @broker.subscriber(
            RabbitQueue(topology.retry_queue(service, tier.name)), decoder=_passthrough
        )
        async def retry_tier(message: Any) -> None:
            self.retried.append(message)

        @broker.subscriber(
            RabbitQueue(topology.dead_queue(service), routing_key=service),
            RabbitExchange(topology.DEAD_EXCHANGE, type=ExchangeType.DIRECT),
            decoder=_passthrough,
        )
        async def dead_letters(message: Any) -> None:
            self.dead.append(message)

    async def record(self, request: Request) -> Request:
        """Record the job `waiting`, as the gateway does before it publishes."""
        assert (await self.store.create(request)).applied
        return request

    async def submit(self, request: Request) -> Request:
        """Record the job, then publish it; the worker has handled it on return."""
        await self.record(request)
        await self.send(request.model_dump_json().encode())
        return request

    async def send(self, body: bytes) -> None:
        # The test broker routes by the queue's binding key, not by its name.
        queue = work_queue(self.service, delivery_limit=self.worker.settings.delivery_limit)
        await self.worker.broker.publish(body, queue=queue)
