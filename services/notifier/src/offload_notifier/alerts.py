"""Operations alerts (DESIGN §6): a message reached a `*.dead` queue, or a work queue
has messages and no consumer, so someone should know.

Each alert is a structured log line, a counter, and (when configured) a POST
to the operations webhook. The dead letter itself stays in its queue for
operators to inspect and replay; the notifier only sees a copy.
"""

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from offload_contracts import topology
from offload_contracts.webhooks import DeadLetterAlert, OpsAlert, QueueStalledAlert
from offload_notifier import metrics
from offload_runtime.logging import get_logger

log = get_logger("offload.notifier.alerts")


class OpsWebhook(Protocol):
    async def send(self, alert: OpsAlert) -> None:
        """POST the alert; raise when the operations webhook did not take it."""
        ...


def describe(
    service: str,
    headers: Mapping[str, Any],
    *,
    message_id: str | None,
    body: bytes,
    now: datetime,
) -> DeadLetterAlert:
    """What a dead letter of `service` is about, from Offload's headers or RabbitMQ's."""
    reason = headers.get(topology.HEADER_ERROR_TYPE) or _rabbit_reason(headers) or "unknown"
    attempt = headers.get(topology.HEADER_ATTEMPT)
    error = headers.get(topology.HEADER_ERROR)
    return DeadLetterAlert(
        queue=topology.dead_queue(service),
        reason=str(reason),
        error=None if error is None else str(error),
        message_id=message_id,
        job_id=_job_id(body) or message_id,
        attempt=attempt if isinstance(attempt, int) else None,
        at=now,
    )


async def raise_alert(alert: DeadLetterAlert, *, ops: OpsWebhook | None) -> None:
    """Log, count, and tell the operations webhook. Never raises: the dead letter is safe."""
    metrics.DEAD_LETTER_ALERTS.labels(alert.queue, alert.reason).inc()
    log.error(
        "dead letter",
        alert="dead_letter",
        queue=alert.queue,
        reason=alert.reason,
        error=alert.error,
        job_id=alert.job_id,
        message_id=alert.message_id,
        attempt=alert.attempt,
    )
    await _tell_ops(alert, ops)


async def raise_stall_alert(alert: QueueStalledAlert, *, ops: OpsWebhook | None) -> None:
    """Log, count, and tell the operations webhook that nothing consumes a work queue."""
    metrics.QUEUE_STALL_ALERTS.labels(alert.queue).inc()
    log.error(
        "work queue stalled: messages ready and no consumer",
        alert="queue_stalled",
        queue=alert.queue,
        ready=alert.ready,
        since=alert.since.isoformat(),
    )
    await _tell_ops(alert, ops)


async def _tell_ops(alert: OpsAlert, ops: OpsWebhook | None) -> None:
    if ops is None:
        return
    try:
        await ops.send(alert)
    except Exception as exc:
        # One attempt only: retrying through queues could itself end in a dead
        # queue and alert about the alert. The log line and the metric remain.
        metrics.OPS_WEBHOOK_FAILURES.inc()
        log.warning("operations webhook failed", queue=alert.queue, error=str(exc))


def _rabbit_reason(headers: Mapping[str, Any]) -> str | None:
    """RabbitMQ's own dead-letter reason (`delivery_limit`, `rejected`, `expired`)."""
    first = headers.get("x-first-death-reason")
    if first:
        return str(first)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return str(deaths[0].get("reason") or "") or None
    return None


def _job_id(body: bytes) -> str | None:
    """A job request's `id`, or a webhook delivery's event's `job_id`."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("id"), str):
        return str(data["id"])
    event = data.get("event")
    if isinstance(event, dict) and isinstance(event.get("job_id"), str):
        return str(event["job_id"])
    return None
