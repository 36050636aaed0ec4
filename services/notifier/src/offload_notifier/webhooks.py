"""Webhook delivery, the domain part (DESIGN §6, Standard Webhooks).

Which events a job's webhook gets, the body and headers of one attempt, and
what a receiver's answer means: delivered, stop (410), or an error, transient
or permanent. Which retry tier comes next, and the dead queue, are the
runtime's retrying consumer's business; this module knows no broker. The HTTP
client, the secrets and the delivery log are ports; `app.py` wires them.
"""

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ValidationError

from offload_contracts import EventKind, JobEvent
from offload_contracts.events import INTERNAL_EVENT_FIELDS
from offload_contracts.webhooks import WebhookDelivery, WebhookPayload
from offload_notifier import metrics
from offload_runtime.errors import Deferred, PermanentError, TransientError
from offload_runtime.logging import get_logger
from offload_runtime.settings import RetryTier
from offload_runtime.url_guard import UnsafeURL
from offload_runtime.work import Delivery, Failure, InvalidMessage

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
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent or bad.

    The Python client parses the same header (`offload.protocol.retry_after_seconds`)
    on purpose: it installs with `contracts` alone and shares no code with the
    services. This one takes the clock, so a delivery's schedule is tested without time.
    """
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


class DeliveryFailed(TransientError):
    """The receiver did not take the delivery (an error answer, a redirect, no answer)."""

    kind = "webhook_failed"


class DeliveryRefused(PermanentError):
    """The SSRF guard refused the URL: no attempt will ever be made."""

    kind = "refused"


def raise_for(result: Attempt, *, max_retry_after_s: float) -> None:
    """Delivered or gone: return. Refused: `DeliveryRefused`. Failed: `DeliveryFailed`,
    with the receiver's `Retry-After` (capped at `max_retry_after_s`) and HTTP status.
    """
    if result.outcome in (Outcome.DELIVERED, Outcome.GONE):
        return
    if result.outcome is Outcome.REFUSED:
        raise DeliveryRefused(result.error)
    retry_after = result.retry_after_s
    if retry_after is not None:
        retry_after = min(retry_after, max_retry_after_s)
    raise DeliveryFailed(result.error, retry_after=retry_after, http_status=result.status)


def again(
    delivery: WebhookDelivery, tier: RetryTier, retry_after: float | None, *, now: datetime
) -> WebhookDelivery:
    """The next attempt of `delivery`, to wait in `tier`. When a `Retry-After` is longer
    than even that tier, `not_before` makes the message wait in a tier again."""
    not_before = None
    if retry_after is not None and retry_after > tier.delay_s:
        not_before = now + timedelta(seconds=retry_after)
    return delivery.model_copy(update={"attempt": delivery.attempt + 1, "not_before": not_before})


def decode_delivery(body: bytes) -> WebhookDelivery | None:
    """The delivery in a message body, or None when no contract accepts it (poison)."""
    try:
        return WebhookDelivery.model_validate_json(body)
    except ValidationError:
        return None


# --------------------------------------------------------------------------- the worker


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


_span: ContextVar[SpanNotes | None] = ContextVar("webhook_span", default=None)


class Deliverer:
    """One message of the webhook queue: defer, or attempt it and say how it went.

    It is the retrying consumer's `Work` (`offload_runtime.work`): the consumer
    decides between a retry tier and the dead queue from the error `run` raises,
    and calls back `retrying`, `failed` or `succeeded` to log and record it.
    """

    def __init__(
        self,
        *,
        transport: WebhookTransport,
        signer: Signer,
        check_url: URLCheck,
        delivery_log: DeliveryLog,
        max_attempts: int,
        max_retry_after_s: float,
        clock: Callable[[], float] = time.time,
        tracing: DeliveryTracing | None = None,
    ) -> None:
        self._transport = transport
        self._signer = signer
        self._check_url = check_url
        self._log = delivery_log
        self._max_attempts = max_attempts
        self._max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._tracing = tracing

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def decode(self, delivery: Delivery) -> WebhookDelivery:
        found = decode_delivery(delivery.body)
        if found is None:
            raise InvalidMessage("message rejected: not a webhook delivery")
        return found

    @contextmanager
    def context(self, item: WebhookDelivery) -> Iterator[None]:
        if self._tracing is None:
            yield
            return
        with self._tracing.span(item) as span:
            token = _span.set(span)
            try:
                yield
            finally:
                _span.reset(token)

    def attempts(self, item: WebhookDelivery) -> tuple[int, int]:
        return item.attempt, self._max_attempts

    def message_id(self, item: WebhookDelivery) -> str:
        return item.webhook_id

    def next_attempt(
        self, item: WebhookDelivery, tier: RetryTier, retry_after: float | None
    ) -> bytes:
        return (
            again(item, tier, retry_after, now=self._now())
            .model_dump_json(exclude_none=True)
            .encode()
        )

    async def begin(self, item: WebhookDelivery) -> bool:
        return True

    async def run(self, item: WebhookDelivery) -> Attempt:
        """One attempt; raises `Deferred`, `DeliveryRefused` or `DeliveryFailed` unless it
        was delivered (or gone)."""
        now = self._now()
        if item.not_before is not None and item.not_before > now:
            metrics.WEBHOOK_DELIVERIES.labels("deferred").inc()
            raise Deferred((item.not_before - now).total_seconds())
        began = time.perf_counter()
        try:
            result = await attempt(
                item,
                transport=self._transport,
                signer=self._signer,
                check_url=self._check_url,
                clock=self._clock,
            )
        except Exception as exc:  # our side failed (e.g. the secret could not be read)
            log.warning("webhook attempt could not be made", exc_info=True)
            result = Attempt(Outcome.FAILED, error=f"could not send: {type(exc).__name__}")
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - began)
        raise_for(result, max_retry_after_s=self._max_retry_after_s)
        return result

    async def succeeded(self, item: WebhookDelivery, result: Attempt) -> None:
        await self._settled(item, result.outcome.value, status=result.status, error=None)

    async def retrying(self, item: WebhookDelivery, failure: Failure, tier: RetryTier) -> bool:
        await self._settled(
            item, "retried", status=failure.http_status, error=failure.message, tier=tier.name
        )
        return True

    async def failed(self, item: WebhookDelivery | None, body: bytes, failure: Failure) -> None:
        if item is None:
            metrics.WEBHOOK_DELIVERIES.labels("invalid").inc()
            return
        label = "refused" if failure.type == DeliveryRefused.kind else "dead"
        await self._settled(item, label, status=failure.http_status, error=failure.message)

    async def _settled(
        self,
        delivery: WebhookDelivery,
        label: str,
        *,
        status: int | None,
        error: str | None,
        tier: str | None = None,
    ) -> None:
        span = _span.get()
        if span is not None:
            span.set_attribute("offload.webhook.outcome", label)
        metrics.WEBHOOK_DELIVERIES.labels(label).inc()
        log.log(
            logging.INFO if label in ("delivered", "retried") else logging.WARNING,
            "webhook " + label,
            job_id=delivery.event.job_id,
            webhook_id=delivery.webhook_id,
            attempt=delivery.attempt,
            status=status,
            error=error or None,
            tier=tier,
        )
        try:
            await self._log.record(
                delivery.event.job_id,
                delivery.webhook_id,
                outcome=label,
                attempts=delivery.attempt,
                status=status,
                error=error or None,
                url=delivery.url,
            )
        except Exception:
            log.warning("delivery outcome not recorded", exc_info=True)
