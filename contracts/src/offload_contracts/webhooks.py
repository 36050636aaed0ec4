"""Webhook messages (DESIGN §6): what the notifier queues, what it POSTs, how it alerts.

A job's events reach its webhook URL as Standard Webhooks: the body is a
`WebhookPayload`; headers `webhook-id` (the event id, the same on every
attempt), `webhook-timestamp` and `webhook-signature`.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field

from offload_contracts.base import Contract
from offload_contracts.events import JobEvent


class WebhookDelivery(Contract):
    """One job event to deliver to one URL: the message on the notifier's work queue.

    The body is the same on every attempt except `attempt` (and `not_before`),
    so attempts are counted here, never from RabbitMQ's `x-death`.
    """

    webhook_id: str = Field(
        description="The `webhook-id` header: the event's id, the same on every attempt."
    )
    url: str = Field(description="Where to POST the event.")
    event: JobEvent = Field(description="The job event to deliver.")
    attempt: int = Field(default=1, ge=1, description="This delivery's attempt number, from 1.")
    not_before: datetime | None = Field(
        default=None,
        description="No attempt before this time: the receiver's `Retry-After` was longer than "
        "the delay tier that brought the message back.",
    )


class WebhookPayload(Contract):
    """The JSON body POSTed to a receiver (Standard Webhooks)."""

    type: str = Field(description="`<job type>.<event>`, e.g. `image.process.completed`.")
    timestamp: datetime = Field(description="When the event happened (UTC).")
    data: JobEvent = Field(description="The job event.")


class DeadLetterAlert(Contract):
    """What the notifier POSTs to the operations webhook when a message reaches a dead queue."""

    type: Literal["dead_letter"] = Field(default="dead_letter", description="Alert kind.")
    queue: str = Field(description="The dead queue the message reached, e.g. `image.dead`.")
    reason: str = Field(
        description="Offload's error type (`permanent`, `invalid_message`, `webhook_failed`…) "
        "or RabbitMQ's dead-letter reason (`delivery_limit`, `rejected`, `expired`)."
    )
    error: str | None = Field(default=None, description="The error message, when there is one.")
    message_id: str | None = Field(default=None, description="The message's id (a job id).")
    job_id: str | None = Field(default=None, description="The job the message was about.")
    attempt: int | None = Field(default=None, description="Attempts made before it was parked.")
    at: datetime = Field(description="When the alert was raised (UTC).")


class QueueStalledAlert(Contract):
    """What the notifier POSTs to the operations webhook when a work queue has messages
    ready and no consumer for `OFFLOAD_STALL_ALERT_AFTER_S`: nothing will run them."""

    type: Literal["queue_stalled"] = Field(default="queue_stalled", description="Alert kind.")
    queue: str = Field(description="The work queue, e.g. `video.jobs`.")
    ready: int = Field(description="Messages ready at the last check.")
    since: datetime = Field(description="When the queue was first seen stalled (UTC).")
    at: datetime = Field(description="When the alert was raised (UTC).")


OpsAlert = DeadLetterAlert | QueueStalledAlert
"""Everything the operations webhook receives; `type` tells them apart."""

WEBHOOK_MODELS: dict[str, type[Contract]] = {
    "WebhookDelivery": WebhookDelivery,
    "WebhookPayload": WebhookPayload,
    "DeadLetterAlert": DeadLetterAlert,
    "QueueStalledAlert": QueueStalledAlert,
}
"""Every webhook message, for schema snapshots."""
