"""The notifier's RabbitMQ side: its queues, and the relay's publishes (all confirmed).

Webhook deliveries use the runtime's service topology under the notifier's
name: `notifier.jobs` (the deliveries; DESIGN §3 calls it `notifier.webhooks`),
`notifier.retry.<tier>` and `notifier.dead`. Dead-letter alerts come from
one more quorum queue, `notifier.dead-alerts`, bound to the `jobs.dead`
exchange once per alerting service: the direct exchange copies each dead
letter into it as well as into its `<service>.dead` queue, so alerting
consumes a copy and the dead letters themselves stay for operators to replay.
A delivery's retries and dead letter are published by the runtime's retrying
consumer (`offload_runtime.consumer`), as a job's are.
"""

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractRobustExchange
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from offload_contracts import topology
from offload_contracts.webhooks import WebhookDelivery
from offload_notifier.relay import RelayedEvent
from offload_runtime import telemetry
from offload_runtime.broker import (
    declare_exchanges,
    declare_service_topology,
    events_exchange,
    publish_confirmed,
)
from offload_runtime.settings import RetryTier


def dead_alerts_queue(service: str) -> RabbitQueue:
    """`<service>.dead-alerts`: a copy of every dead letter of the alerting services."""
    return RabbitQueue(
        topology.dead_alerts_queue(service), queue_type=QueueType.QUORUM, durable=True
    )


async def declare_notifier_topology(
    broker: RabbitBroker,
    service: str,
    tiers: Sequence[RetryTier],
    *,
    delivery_limit: int,
    alert_services: Sequence[str],
) -> None:
    """Declare and bind the notifier's queues (idempotent, every replica at every start)."""
    await declare_service_topology(broker, service, tiers, delivery_limit=delivery_limit)
    exchanges = await declare_exchanges(broker)
    # Declared on a channel of its own, straight through aio-pika: FastStream's
    # declarer would cache the queue and hand it, channel and all, to the subscriber,
    # which would then consume on the default channel without its prefetch.
    channel = await broker.config.channel_manager.get_channel(Channel())
    queue = dead_alerts_queue(service)
    alerts = await channel.declare_queue(
        queue.name, durable=True, arguments=dict(queue.arguments or {})
    )
    for name in alert_services:
        await alerts.bind(exchanges[topology.DEAD_EXCHANGE], routing_key=name)


class RabbitPublisher:
    """Every publish the notifier makes; each call returns once the broker confirmed."""

    def __init__(self, broker: RabbitBroker, service: str) -> None:
        self._broker = broker
        self._service = service
        self._events: AbstractRobustExchange | None = None

    async def publish_events(self, events: Sequence[RelayedEvent]) -> None:
        """Each event to `jobs.events` with routing key `<type>.<event>`, confirms awaited together.

        Not mandatory: with no queue bound for a routing key the event is
        simply not wanted (the exchange is for other systems to bind).
        """
        if self._events is None:
            self._events = await self._broker.declare_exchange(events_exchange())
        exchange = self._events
        try:
            await self._publish_all(exchange, events)
        except Exception:
            self._events = None  # declare it again next time (the channel may be new)
            raise

    @staticmethod
    async def _publish_all(
        exchange: AbstractRobustExchange, events: Sequence[RelayedEvent]
    ) -> None:
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        relayed.json.encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=relayed.event.event_id,
                        type=relayed.event.routing_key,
                        # The body leaves the trace context out; a consumer that traces
                        # finds it where FastStream and OpenTelemetry look for it.
                        headers=(
                            {"traceparent": relayed.event.traceparent}
                            if relayed.event.traceparent
                            else None
                        ),
                    ),
                    routing_key=relayed.event.routing_key,
                    mandatory=False,
                )
                for relayed in events
            )
        )

    async def schedule_webhooks(self, deliveries: Sequence[WebhookDelivery]) -> None:
        await asyncio.gather(*(self._schedule(delivery) for delivery in deliveries))

    async def _schedule(self, delivery: WebhookDelivery) -> None:
        # Published in the trace of the event (the worker's span that recorded it): with
        # tracing on, the broker's telemetry middleware writes that trace into the
        # message's headers, and the delivery's consumer span continues it.
        with telemetry.continue_trace(delivery.event.traceparent):
            await publish_confirmed(
                self._broker,
                delivery.model_dump_json(exclude_none=True).encode(),
                routing_key=topology.work_queue(self._service),
                message_id=delivery.webhook_id,
            )
