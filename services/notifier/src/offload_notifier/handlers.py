"""The notifier's broker subscribers (thin): webhook deliveries and dead-letter copies."""

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage

from offload_contracts import topology
from offload_contracts.webhooks import WebhookDelivery
from offload_notifier.adapters.rabbit import dead_alerts_queue
from offload_notifier.alerts import OpsWebhook, describe, raise_alert
from offload_notifier.webhooks import Deliverer
from offload_runtime.consumer import RetryingConsumer
from offload_runtime.settings import RetryTier
from offload_runtime.store import utcnow

ALERT_PREFETCH = 16


async def _passthrough(message: RabbitMessage) -> RabbitMessage:
    return message


def subscribe(
    broker: RabbitBroker,
    *,
    service: str,
    tiers: tuple[RetryTier, ...],
    delivery_limit: int,
    concurrency: int,
    deliverer: Deliverer,
    ops: OpsWebhook | None,
) -> RetryingConsumer[WebhookDelivery]:
    """Register both subscribers on the broker (no I/O until the broker starts).

    Webhook deliveries go through the runtime's retrying consumer, as jobs do:
    it owns their acks, retry tiers and dead letters.
    """
    webhooks = RetryingConsumer(
        service=service,
        broker=broker,
        work=deliverer,
        tiers=tiers,
        concurrency=concurrency,
        delivery_limit=delivery_limit,
        description="Delivers job events to webhook URLs, signed (Standard Webhooks).",
    )
    webhooks.subscribe()

    async def on_dead_letter(message: RabbitMessage) -> None:
        raw = message.raw_message
        alert = describe(
            raw.routing_key or "unknown",
            raw.headers or {},
            message_id=raw.message_id,
            body=message.body,
            now=utcnow(),
        )
        await raise_alert(alert, ops=ops)
        await message.ack()

    broker.subscriber(
        dead_alerts_queue(service),
        channel=Channel(prefetch_count=ALERT_PREFETCH),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=_passthrough,
        title=f"{topology.dead_alerts_queue(service)}:consume",
        description="Raises an alert for every message that reaches a dead queue.",
    )(on_dead_letter)
    return webhooks
