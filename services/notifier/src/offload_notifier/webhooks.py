"""Webhook delivery, the domain part (DESIGN §6, Standard Webhooks).

Which events a job's webhook gets, the body and headers of one attempt, what
a receiver's answer means, and what happens next (delivered, stop, retry in a
delay tier, or the dead queue). The HTTP client, the secrets and the broker
are ports; `handlers.py` wires them.
"""

import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ValidationError

from offload_contracts import EventKind, JobEvent
from offload_contracts.events import INTERNAL_EVENT_FIELDS
from offload_contracts.webhooks import WebhookDelivery, WebhookPayload
from offload_notifier import metrics
from offload_runtime.logging import get_logger
from offload_runtime.runner import pick_tier
from offload_runtime.settings import RetryTier
from offload_runtime.url_guard import UnsafeURL

log = get_logger("offload.notifier.webhooks")

TERMINAL_EVENTS = frozenset(kind for kind in EventKind if kind.is_terminal)
"""What a webhook without an `events` filter receives: the job's outcome only."""

USER_AGENT = "Offload-Webhooks/1"


# --------------------------------------------------------------------------- which events


def wanted_events(spec: Mapping[str, Any]) -> frozenset[EventKind]:
    """The event kinds a job's webhook spec asks for (terminal ones when it names none)."""
    names = spec.get("events")
    if not names:
        return TERMINAL_EVENTS
    kinds = {kind for kind in EventKind if kind.value in set(names)}
    return frozenset(kinds)


def delivery_for(event: JobEvent, webhook_json: str | None) -> WebhookDelivery | None:
    """The delivery to schedule for `event`, if its job has a webhook that wants it."""
    if not webhook_json:
        return None
    try:
        spec = json.loads(webhook_json)
    except ValueError:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
        return None
    if event.event not in wanted_events(spec):
        return None
    return WebhookDelivery(webhook_id=event.event_id, url=spec["url"], event=event)


def payload_of(event: JobEvent) -> bytes:
    """The POST body: `{"type": "<job type>.<event>", "timestamp", "data": <event>}`.

    Built from the event alone, so it is byte-for-byte the same on every attempt.
    Internal fields (the trace context) stay out: the receiver gets it as the
    request's `traceparent` header when tracing is on.
    """
    payload = WebhookPayload(type=event.routing_key, timestamp=event.at, data=event)
    return payload.model_dump_json(
        exclude_none=True, exclude={"data": set(INTERNAL_EVENT_FIELDS)}
    ).encode()


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's HTTP answer, as far as delivery cares."""

    status: int
    retry_after: str | None = None


class TransportError(Exception):
    """The request got no HTTP answer: connection refused or reset, timeout, TLS failure."""


class WebhookTransport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST without following redirects; raise `TransportError` when no answer came,
        `UnsafeURL` when the address it would connect to is refused (SSRF guard)."""
        ...


class Signer(Protocol):
    async def signature(self, tenant: str, message_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header: one `v1,<sig>` per secret signing now."""
        ...


class URLCheck(Protocol):
    async def __call__(self, url: str) -> None:
        """Raise `UnsafeURL` when the URL must not be called (SSRF guard)."""
        ...


# --------------------------------------------------------------------------- one attempt


class Outcome(StrEnum):
    """How one attempt ended."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: the receiver asks us to stop
    REFUSED = "refused"  # the SSRF guard refused the URL
    FAILED = "failed"  # any other answer, a redirect, a timeout, no connection


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt did."""

    outcome: Outcome
    status: int | None = None
    error: str = ""
    retry_after_s: float | None = None


async def attempt(
    delivery: WebhookDelivery,
    *,
    transport: WebhookTransport,
    signer: Signer,
    check_url: URLCheck,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """Make one signed POST of `delivery` and classify the answer."""
    try:
        await check_url(delivery.url)
    except UnsafeURL as exc:
        return Attempt(Outcome.REFUSED, error=str(exc))
    body = payload_of(delivery.event)
    timestamp = int(clock())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": await signer.signature(
            delivery.event.tenant, delivery.webhook_id, timestamp, body
        ),
    }
    try:
        answer = await transport.post(delivery.url, body, headers)
    except UnsafeURL as exc:  # checked again at connect time: DNS may have changed
        return Attempt(Outcome.REFUSED, error=str(exc))
    except TransportError as exc:
        return Attempt(Outcome.FAILED, error=str(exc))
    if 200 <= answer.status < 300:
        return Attempt(Outcome.DELIVERED, status=answer.status)
    if answer.status == 410:
        return Attempt(Outcome.GONE, status=410, error="410 Gone: the receiver asked to stop")
    if 300 <= answer.status < 400:
        error = f"HTTP {answer.status}: redirects are not followed"
    else:
        error = f"HTTP {answer.status}"
    return Attempt(
        Outcome.FAILED,
        status=answer.status,
        error=error,
        retry_after_s=parse_retry_after(answer.retry_after, now=clock()),
    )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


# --------------------------------------------------------------------------- what next


class StepKind(StrEnum):
    DONE = "done"  # delivered, or stopped on purpose (410)
    RETRY = "retry"  # park `delivery` in `tier`, then attempt again
    DEAD = "dead"  # out of attempts (or refused): the dead queue, with `error`


@dataclass(frozen=True, slots=True)
class Step:
    """What the worker does after an attempt (or instead of one)."""

    kind: StepKind
    delivery: WebhookDelivery | None = None
    tier: RetryTier | None = None
    error: str = ""
    error_type: str = ""


def next_step(
    delivery: WebhookDelivery,
    result: Attempt,
    *,
    tiers: Sequence[RetryTier],
    max_attempts: int,
    max_retry_after_s: float,
    now: datetime,
) -> Step:
    """Delivered or gone: done. Refused: dead at once. Failed: a retry tier, or dead when out
    of attempts. A `Retry-After` picks the first tier at least that long; when even the
    longest tier is shorter, `not_before` makes the message wait in it again.
    """
    if result.outcome in (Outcome.DELIVERED, Outcome.GONE):
        return Step(StepKind.DONE)
    if result.outcome is Outcome.REFUSED:
        return Step(StepKind.DEAD, error=result.error, error_type="refused")
    if delivery.attempt >= max_attempts:
        return Step(
            StepKind.DEAD,
            error=f"{result.error} (attempts exhausted: {delivery.attempt} of {max_attempts})",
            error_type="webhook_failed",
        )
    retry_after = result.retry_after_s
    if retry_after is not None:
        retry_after = min(retry_after, max_retry_after_s)
    tier = pick_tier(tiers, delivery.attempt, retry_after)
    not_before = None
    if retry_after is not None and retry_after > tier.delay_s:
        not_before = now + timedelta(seconds=retry_after)
    again = delivery.model_copy(update={"attempt": delivery.attempt + 1, "not_before": not_before})
    return Step(StepKind.RETRY, delivery=again, tier=tier, error=result.error)


def deferral(delivery: WebhookDelivery, *, tiers: Sequence[RetryTier], now: datetime) -> Step:
    """A delivery back from its tier before its `not_before`: wait again, no attempt counted."""
    assert delivery.not_before is not None
    remaining = (delivery.not_before - now).total_seconds()
    return Step(StepKind.RETRY, delivery=delivery, tier=pick_tier(tiers, 1, remaining))


def decode_delivery(body: bytes) -> WebhookDelivery | None:
    """The delivery in a message body, or None when no contract accepts it (poison)."""
    try:
        return WebhookDelivery.model_validate_json(body)
    except ValidationError:
        return None


# --------------------------------------------------------------------------- the worker


class Scheduler(Protocol):
    """Where deliveries go after an attempt; each call returns once the broker confirmed."""

    async def retry_webhook(self, delivery: WebhookDelivery, tier: RetryTier) -> None: ...

    async def dead_letter(
        self,
        body: bytes,
        *,
        error: str,
        error_type: str,
        attempt: int,
        message_id: str | None,
    ) -> None: ...


class DeliveryLog(Protocol):
    async def record(self, job_id: str, event_id: str, **outcome: Any) -> None:
        """Remember what became of one event's delivery (best effort)."""
        ...


class SpanNotes(Protocol):
    def set_attribute(self, key: str, value: str) -> None: ...


class DeliveryTracing(Protocol):
    def span(self, delivery: WebhookDelivery) -> AbstractContextManager[SpanNotes | None]:
        """A span around handling `delivery`, in the trace of its event (the job's trace).

        The request made inside it carries that trace to the receiver.
        """
        ...


class Deliverer:
    """Handles one message of the webhook queue: defer, attempt, then retry, stop or park."""

    def __init__(
        self,
        *,
        transport: WebhookTransport,
        signer: Signer,
        check_url: URLCheck,
        scheduler: Scheduler,
        delivery_log: DeliveryLog,
        tiers: Sequence[RetryTier],
        max_attempts: int,
        max_retry_after_s: float,
        clock: Callable[[], float] = time.time,
        tracing: DeliveryTracing | None = None,
    ) -> None:
        self._transport = transport
        self._signer = signer
        self._check_url = check_url
        self._scheduler = scheduler
        self._log = delivery_log
        self._tiers = tuple(tiers)
        self._max_attempts = max_attempts
        self._max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._tracing = tracing

    async def handle(self, body: bytes) -> Outcome | None:
        """Process one delivery message; returns the attempt's outcome (None: no attempt)."""
        delivery = decode_delivery(body)
        if delivery is None:
            metrics.WEBHOOK_DELIVERIES.labels("invalid").inc()
            await self._scheduler.dead_letter(
                body,
                error="message rejected: not a webhook delivery",
                error_type="invalid_message",
                attempt=0,
                message_id=None,
            )
            return None
        if self._tracing is None:
            return await self._handle(delivery, body, None)
        with self._tracing.span(delivery) as span:
            return await self._handle(delivery, body, span)

    async def _handle(
        self, delivery: WebhookDelivery, body: bytes, span: SpanNotes | None
    ) -> Outcome | None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        if delivery.not_before is not None and delivery.not_before > now:
            step = deferral(delivery, tiers=self._tiers, now=now)
            assert step.delivery is not None and step.tier is not None
            await self._scheduler.retry_webhook(step.delivery, step.tier)
            metrics.WEBHOOK_DELIVERIES.labels("deferred").inc()
            return None

        began = time.perf_counter()
        try:
            result = await attempt(
                delivery,
                transport=self._transport,
                signer=self._signer,
                check_url=self._check_url,
                clock=self._clock,
            )
        except Exception as exc:  # our side failed (e.g. the secret could not be read)
            log.warning("webhook attempt could not be made", exc_info=True)
            result = Attempt(Outcome.FAILED, error=f"could not send: {type(exc).__name__}")
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - began)

        step = next_step(
            delivery,
            result,
            tiers=self._tiers,
            max_attempts=self._max_attempts,
            max_retry_after_s=self._max_retry_after_s,
            now=now,
        )
        if step.kind is StepKind.RETRY:
            assert step.delivery is not None and step.tier is not None
            await self._scheduler.retry_webhook(step.delivery, step.tier)
            label = "retried"
        elif step.kind is StepKind.DEAD:
            await self._scheduler.dead_letter(
                body,
                error=step.error,
                error_type=step.error_type,
                attempt=delivery.attempt,
                message_id=delivery.webhook_id,
            )
            label = "refused" if result.outcome is Outcome.REFUSED else "dead"
        else:
            label = result.outcome.value
        if span is not None:
            span.set_attribute("offload.webhook.outcome", label)
        metrics.WEBHOOK_DELIVERIES.labels(label).inc()
        log.log(
            logging.INFO if label in ("delivered", "retried") else logging.WARNING,
            "webhook " + label,
            job_id=delivery.event.job_id,
            webhook_id=delivery.webhook_id,
            attempt=delivery.attempt,
            status=result.status,
            error=result.error or None,
            tier=step.tier.name if step.tier else None,
        )
        await self._record(delivery, label, result, step)
        return result.outcome

    async def _record(
        self, delivery: WebhookDelivery, label: str, result: Attempt, step: Step
    ) -> None:
        try:
            await self._log.record(
                delivery.event.job_id,
                delivery.webhook_id,
                outcome=label,
                attempts=delivery.attempt,
                status=result.status,
                error=step.error or result.error or None,
                url=delivery.url,
            )
        except Exception:
            log.warning("delivery outcome not recorded", exc_info=True)
