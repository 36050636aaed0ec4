"""Delivery spans (the `DeliveryTracing` port): each webhook delivery in its job's trace."""

from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from offload_contracts.webhooks import WebhookDelivery
from offload_runtime import telemetry

SPAN_NAME = "webhook deliver"


class DeliverySpans:
    """Opens one span per delivery message, a child of the span that recorded its event."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider

    def span(self, delivery: WebhookDelivery) -> AbstractContextManager[Any]:
        return telemetry.span_in_trace(
            self._provider,
            SPAN_NAME,
            delivery.event.traceparent,
            attributes={
                "offload.job_id": delivery.event.job_id,
                "offload.job_type": delivery.event.type,
                "offload.event": delivery.event.event.value,
                "offload.webhook.id": delivery.webhook_id,
                "offload.webhook.attempt": delivery.attempt,
            },
        )
