"""What the admin API knows about queues and dead letters, without the broker.

The topology's queues (`QueueRef`), what a passive declare says about one
(`QueueStats`), and how an operator reads a parked message (`DeadLetter`,
with `WebhookLetter` for a webhook delivery). `amqp.py` reads them from
RabbitMQ; what AMQP can and cannot tell is described there.
"""

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from offload_contracts import topology
from offload_gateway.adapters.broker import QueueCount
from offload_runtime.settings import RetryTier

QueueKind = Literal["work", "retry", "dead"]

UNACKED_NOTE = (
    "Unacked counts come from the consuming workers and notifiers, which report the "
    "deliveries they hold every second (AMQP does not tell them); a queue without "
    "consumers has none, and one whose consumers have not reported is unknown."
)


@dataclass(frozen=True, slots=True)
class QueueRef:
    """One queue of Offload's topology (DESIGN §3)."""

    name: str
    service: str
    kind: QueueKind
    tier: str | None = None


def service_queues(services: Iterable[str], tiers: Sequence[RetryTier]) -> list[QueueRef]:
    """Every work, retry and dead queue of `services`, in topology order."""
    refs: list[QueueRef] = []
    for service in services:
        refs.append(QueueRef(topology.work_queue(service), service, "work"))
        refs.extend(
            QueueRef(topology.retry_queue(service, tier.name), service, "retry", tier.name)
            for tier in tiers
        )
        refs.append(QueueRef(topology.dead_queue(service), service, "dead"))
    return refs


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a passive declare says about one queue; `exists` is false for a 404."""

    queue: QueueRef
    exists: bool
    ready: int | None
    consumers: int | None
    unacked: int | None = None  # not known over AMQP: see `offload_runtime.inflight`

    @classmethod
    def of(cls, queue: QueueRef, counts: QueueCount | None) -> "QueueStats":
        """From a passive declare's counts; None means the queue is missing."""
        if counts is None:
            return cls(queue, exists=False, ready=None, consumers=None)
        return cls(queue, exists=True, ready=counts.ready, consumers=counts.consumers)


@dataclass(frozen=True, slots=True)
class WebhookLetter:
    """What a parked webhook delivery (`notifier.dead`) was about, without its secrets.

    Only the URL's origin is kept: a webhook URL's path or query often carries
    a token (and its user part a password), and dead letters are shown to
    operators and dashboards.
    """

    webhook_id: str
    event: str | None
    url_origin: str | None
    last_status: int | None

    @classmethod
    def parse(cls, data: Mapping[str, Any], headers: Mapping[str, Any]) -> "WebhookLetter | None":
        """From a `WebhookDelivery` body and its headers; None when the body is not one."""
        webhook_id = _text(data.get("webhook_id"))
        if webhook_id is None or not isinstance(data.get("event"), Mapping):
            return None
        event: Mapping[str, Any] = data["event"]
        return cls(
            webhook_id=webhook_id,
            event=_text(event.get("event")),
            url_origin=_origin(data.get("url")),
            last_status=_last_status(headers),
        )


def _last_status(headers: Mapping[str, Any]) -> int | None:
    """The receiver's last HTTP status; None when no answer came."""
    if topology.HEADER_HTTP_STATUS in headers:
        return _int(headers[topology.HEADER_HTTP_STATUS])
    # Deliveries parked before the notifier wrote that header carry the status only
    # in their error text, which starts `HTTP <status>` for an answer that was not
    # 2xx; read it there so those old dead letters still show it.
    status = _LAST_STATUS.match(_text(headers.get(topology.HEADER_ERROR)) or "")
    return int(status.group(1)) if status else None


_LAST_STATUS = re.compile(r"^HTTP (\d{3})\b")


def _origin(url: Any) -> str | None:
    """`scheme://host[:port]` of a URL: no user, password, path or query."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead queue, as an operator reads it.

    Offload's retrying consumer sets the `x-offload-*` headers when it parks a
    job or a webhook delivery; a message RabbitMQ parked by itself (over the
    delivery limit, say) has `x-death` / `x-first-death-reason` instead and no
    Offload error. A webhook delivery the notifier parked names its job inside
    its event, and says where it was going in `webhook`.
    """

    position: int
    job_id: str | None
    type: str | None
    tenant: str | None
    reason: str
    error: str | None
    error_type: str | None
    attempts: int | None
    failed_at: str | None
    source_queue: str | None
    browsed: int
    size: int
    valid_json: bool
    webhook: WebhookLetter | None = None

    @classmethod
    def parse(cls, position: int, body: bytes, headers: Mapping[str, Any]) -> "DeadLetter":
        data: dict[str, Any] | None
        try:
            parsed = json.loads(body)
            data = parsed if isinstance(parsed, dict) else None
        except ValueError:
            data = None
        deaths = headers.get("x-death")
        first_death: Mapping[str, Any] = (
            deaths[-1]
            if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping)
            else {}
        )
        error = _text(headers.get(topology.HEADER_ERROR))
        reason = (
            "failed"
            if error is not None
            else _text(headers.get("x-first-death-reason"))
            or _text(first_death.get("reason"))
            or "unknown"
        )
        attempts = _int(headers.get(topology.HEADER_ATTEMPT))
        if attempts is None and data is not None:
            attempts = _int(data.get("attempt"))
        failed_at = _text(headers.get(topology.HEADER_FAILED_AT))
        if failed_at is None and isinstance(first_death.get("time"), datetime):
            failed_at = first_death["time"].isoformat()
        webhook = WebhookLetter.parse(data, headers) if data else None
        # A job request names its job at the top; a webhook delivery inside its event.
        about: Mapping[str, Any] = (data["event"] if webhook else data) if data else {}
        return cls(
            position=position,
            job_id=_text(about.get("job_id" if webhook else "id")),
            type=_text(about.get("type")),
            tenant=_text(about.get("tenant")),
            reason=reason,
            error=error,
            error_type=_text(headers.get(topology.HEADER_ERROR_TYPE)),
            attempts=attempts,
            failed_at=failed_at,
            source_queue=_text(headers.get(topology.HEADER_SOURCE_QUEUE))
            or _text(headers.get("x-first-death-queue"))
            or _text(first_death.get("queue")),
            browsed=_int(headers.get("x-delivery-count")) or 0,
            size=len(body),
            valid_json=data is not None,
            webhook=webhook,
        )


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """A window of a dead queue: `total` ready messages, these from `offset` on."""

    queue: str
    total: int
    offset: int
    items: list[DeadLetter]
    scanned: int = 0

    @property
    def next_offset(self) -> int | None:
        following = self.offset + len(self.items)
        return following if self.items and following < self.scanned else None


TakeDecision = Literal["ack", "keep"]
"""What a replay callback decides for one message: consume it for good, or put it back."""


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A dead letter held unacked while a callback decides its fate."""

    letter: DeadLetter
    body: bytes
    headers: Mapping[str, Any]


@dataclass(slots=True)
class SweepReport:
    """What one pass over a dead queue did."""

    scanned: int = 0
    acked: int = 0
    kept: int = 0
    remaining: int = 0
    """Ready letters left: those there at the start, less those acked (new arrivals aside)."""
    outcomes: list[tuple[DeadLetter, str]] = field(default_factory=list)


class QueueMissing(LookupError):
    """The queue is not declared on the broker."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    return text or None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes):
        try:
            return int(value)
        except ValueError:
            return None
    return None
