"""The notifier's broker subscribers (thin): webhook deliveries and dead-letter copies."""

from dataclasses import dataclass

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage

from offload_contracts import topology
from offload_notifier.adapters.rabbit import dead_alerts_queue
from offload_notifier.alerts import OpsWebhook, describe, raise_alert
from offload_notifier.webhooks import Deliverer
from offload_runtime.broker import quorum_size_of, work_queue
from offload_runtime.logging import get_logger
from offload_runtime.store import utcnow

log = get_logger("offload.notifier.handlers")

ALERT_PREFETCH = 16


async def _passthrough(message: RabbitMessage) -> RabbitMessage:
    return message


@dataclass
class Held:
    """Webhook deliveries this process holds: handed to it, not yet acked or nacked."""

    deliveries: int = 0


def subscribe(
    broker: RabbitBroker,
    *,
    service: str,
    delivery_limit: int,
    concurrency: int,
    deliverer: Deliverer,
    ops: OpsWebhook | None,
) -> Held:
    """Register both subscribers on the broker (no I/O until the broker starts)."""
    held = Held()

    async def on_webhook_delivery(message: RabbitMessage) -> None:
        held.deliveries += 1
        try:
            await deliver(message)
        finally:
            held.deliveries -= 1

    async def deliver(message: RabbitMessage) -> None:
        try:
            await deliverer.handle(message.body)
        except Exception:
            # Our own broker publish failed: hand the message back. RabbitMQ's delivery
            # limit parks it in the dead queue if this keeps happening.
            log.warning("webhook delivery not handled; requeued", exc_info=True)
            await message.nack(requeue=True)
            return
        await message.ack()

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
        work_queue(service, delivery_limit=delivery_limit, quorum_size=quorum_size_of(broker)),
        channel=Channel(prefetch_count=concurrency),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=_passthrough,
        title=f"{topology.work_queue(service)}:consume",
        description="Delivers job events to webhook URLs, signed (Standard Webhooks).",
    )(on_webhook_delivery)
    broker.subscriber(
        dead_alerts_queue(service),
        channel=Channel(prefetch_count=ALERT_PREFETCH),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=_passthrough,
        title=f"{topology.dead_alerts_queue(service)}:consume",
        description="Raises an alert for every message that reaches a dead queue.",
    )(on_dead_letter)
    return held
