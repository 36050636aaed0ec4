"""Queue inspection and dead-letter mechanics over plain AMQP (no management plugin).

What AMQP 0-9-1 can tell, and what it cannot:

- A passive `queue.declare` answers a queue's **ready** messages and its
  **consumers**. It does not count unacknowledged (in-flight) messages: that
  figure exists only in RabbitMQ's management API / `rabbitmqctl`, which
  Offload does not depend on. `QueueStats.unacked` is therefore always `None`
  here, and says so rather than guess.
- A passive declare of a queue that does not exist closes the channel
  (404 NOT_FOUND); the inspector then opens a fresh channel and goes on.
- Reading a dead queue without consuming it for good: `basic.get` without
  ack takes messages, which are then returned with `basic.nack(requeue=True)`
  in the order they were read. Checked on RabbitMQ 3.10 quorum queues: a
  returned message goes to the *back* of the queue, so `browse` reads the
  whole queue (a full rotation keeps the order) and pages by failure time.
  Each return counts as a delivery: the message's `x-delivery-count` grows by
  one and `redelivered` is set. The dead queues carry no `x-delivery-limit`, so on
  RabbitMQ 3.x browsing never drops a message; RabbitMQ 4.x gives quorum
  queues a default delivery limit of 20, so there give the `*.dead` queues a
  policy with `delivery-limit: -1` (see the README).
- While a window is held, those messages are invisible to other readers of
  the same queue. Nothing consumes dead queues (the notifier's alerts use
  their own queue bound to `jobs.dead`), so only concurrent admin calls
  notice; `QueueOps` serialises them per queue within one process.
- A channel that did `basic.get` on a quorum queue is counted as a consumer
  while it is open, so every window uses its own channel, closed at the end.
"""

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelNotFoundEntity

from offload_contracts import topology
from offload_runtime.broker import connect_robust_nodes
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
    def parse(cls, data: Mapping[str, Any], error: str | None) -> "WebhookLetter | None":
        """From a `WebhookDelivery` body; None when the body is not one."""
        webhook_id = _text(data.get("webhook_id"))
        if webhook_id is None or not isinstance(data.get("event"), Mapping):
            return None
        event: Mapping[str, Any] = data["event"]
        status = _LAST_STATUS.match(error or "")
        return cls(
            webhook_id=webhook_id,
            event=_text(event.get("event")),
            url_origin=_origin(data.get("url")),
            last_status=int(status.group(1)) if status else None,
        )


# The notifier's error for an answer that was not 2xx starts `HTTP <status>`
# (`offload_notifier.webhooks.attempt`); a request that got no answer has no status.
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

    Offload's runner sets the `x-offload-*` headers when it parks a job; a
    message RabbitMQ parked by itself (over the delivery limit, say) has
    `x-death` / `x-first-death-reason` instead and no Offload error. A webhook
    delivery the notifier parked names its job inside its event, and says
    where it was going in `webhook`.
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
        webhook = WebhookLetter.parse(data, error) if data else None
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


class QueueOps:
    """Broker-level queue inspection and dead-letter handling on one AMQP connection.

    The connection is opened on first use and reconnects by itself (aio-pika
    robust connection). Every call opens its own short-lived channel.
    """

    def __init__(self, url: str, *, connection_name: str = "offload-admin") -> None:
        self._url = url
        self._connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._connecting = asyncio.Lock()
        self._queue_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _conn(self) -> AbstractRobustConnection:
        async with self._connecting:
            if self._connection is None or self._connection.is_closed:
                self._connection = await connect_robust_nodes(
                    self._url,
                    client_properties={"connection_name": self._connection_name},
                    timeout=10,
                )
            return self._connection

    async def _channel(self) -> AbstractRobustChannel:
        connection = await self._conn()
        return await connection.channel(publisher_confirms=False)

    def _lock(self, queue: str) -> asyncio.Lock:
        return self._queue_locks.setdefault(queue, asyncio.Lock())

    # ------------------------------------------------------------------ inspection

    async def stats(self, refs: Sequence[QueueRef]) -> list[QueueStats]:
        """Ready and consumer counts of each queue, by passive declare."""
        found: list[QueueStats] = []
        channel = await self._channel()
        try:
            for ref in refs:
                if channel.is_closed:
                    channel = await self._channel()
                try:
                    # robust=False: a robust passive declare answers a cached object.
                    queue = await channel.declare_queue(ref.name, passive=True, robust=False)
                except ChannelNotFoundEntity:
                    found.append(QueueStats(ref, exists=False, ready=None, consumers=None))
                    continue
                result = queue.declaration_result
                found.append(
                    QueueStats(
                        ref,
                        exists=True,
                        ready=int(result.message_count or 0),
                        consumers=int(result.consumer_count or 0),
                    )
                )
        finally:
            if not channel.is_closed:
                await channel.close()
        return found

    async def depth(self, queue: str) -> int:
        """Ready messages in one queue; `QueueMissing` if it is not declared."""
        channel = await self._channel()
        try:
            declared = await channel.declare_queue(queue, passive=True, robust=False)
            return int(declared.declaration_result.message_count or 0)
        except ChannelNotFoundEntity as exc:
            raise QueueMissing(queue) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    # ------------------------------------------------------------------ dead letters

    async def browse(
        self, queue: str, *, offset: int, limit: int, scan_limit: int = 5000
    ) -> DeadLetterPage:
        """Letters `offset .. offset+limit-1`, oldest failure first; every letter is put back.

        RabbitMQ returns a requeued message to the *back* of a quorum queue
        (checked on 3.10), so reading only a window would rotate the queue and
        make pages shift. A browse therefore reads the whole queue (up to
        `scan_limit` letters) and returns every letter in the order it was
        read: a full rotation, which leaves the order as it was. The page is a
        slice of those letters sorted by failure time, so pages are stable.
        Past `scan_limit`, each browse sees the next `scan_limit` letters.
        """
        async with self._lock(queue):
            channel = await self._channel()
            held: list[AbstractIncomingMessage] = []
            try:
                declared = await self._passive(channel, queue)
                total = int(declared.declaration_result.message_count or 0)
                letters: list[DeadLetter] = []
                while len(held) < min(total, scan_limit):
                    message = await declared.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    held.append(message)
                    letters.append(
                        DeadLetter.parse(len(held) - 1, message.body, message.headers or {})
                    )
                await _return_in_order(held)
            finally:
                # Closing the channel returns anything still unacked (e.g. after an error).
                if not channel.is_closed:
                    await channel.close()
            await self._settle(queue, len(held))
        ordered = sorted(letters, key=lambda letter: (letter.failed_at or "", letter.position))
        items = [
            dataclasses.replace(letter, position=index)
            for index, letter in enumerate(ordered[offset : offset + limit], start=offset)
        ]
        return DeadLetterPage(queue, total, offset, items, scanned=len(letters))

    async def sweep(
        self,
        queue: str,
        decide: Callable[[HeldMessage], Awaitable[tuple[TakeDecision, str]]],
        *,
        scan_limit: int,
        act_limit: int,
        wanted: Callable[[DeadLetter], bool] = lambda _letter: True,
    ) -> SweepReport:
        """Pass over up to `scan_limit` messages; for those `wanted`, ask `decide`.

        A message is acked only when `decide` answers "ack" (after it has done
        its work, e.g. republished the job); every other message is returned
        to the queue in order. At most `act_limit` messages are decided.
        """
        report = SweepReport()
        async with self._lock(queue):
            channel = await self._channel()
            kept: list[AbstractIncomingMessage] = []
            try:
                declared = await self._passive(channel, queue)
                total = int(declared.declaration_result.message_count or 0)
                decided = 0
                while report.scanned < min(scan_limit, total) and decided < act_limit:
                    message = await declared.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    report.scanned += 1
                    headers = message.headers or {}
                    letter = DeadLetter.parse(report.scanned - 1, message.body, headers)
                    if not wanted(letter):
                        kept.append(message)
                        continue
                    decided += 1
                    try:
                        decision, note = await decide(HeldMessage(letter, message.body, headers))
                    except Exception:
                        kept.append(message)
                        raise
                    report.outcomes.append((letter, note))
                    if decision == "ack":
                        await message.ack()
                        report.acked += 1
                    else:
                        kept.append(message)
                report.kept = len(kept)
                report.remaining = max(0, total - report.acked)
                await _return_in_order(kept)
            finally:
                if not channel.is_closed:
                    await channel.close()
            await self._settle(queue, len(kept))
        return report

    async def _settle(self, queue: str, returned: int, timeout_s: float = 2.0) -> None:
        """Wait until the queue counts the `returned` messages again.

        A quorum queue applies returns asynchronously (through Raft): right
        after the nacks its ready count can still miss them, and the next read
        would skip them. Waiting here makes each call see the previous one's
        result.
        """
        if returned == 0:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                if await self.depth(queue) >= returned:
                    return
            except QueueMissing:
                return
            await asyncio.sleep(0.005)

    async def purge(self, queue: str) -> int:
        """Delete every ready message of `queue`; answers how many."""
        async with self._lock(queue):
            channel = await self._channel()
            try:
                declared = await self._passive(channel, queue)
                result = await declared.purge()
                return int(getattr(result, "message_count", 0) or 0)
            finally:
                if not channel.is_closed:
                    await channel.close()

    @staticmethod
    async def _passive(channel: AbstractRobustChannel, queue: str) -> Any:
        try:
            return await channel.declare_queue(queue, passive=True, robust=False)
        except ChannelNotFoundEntity as exc:
            raise QueueMissing(queue) from exc


async def _return_in_order(messages: list[AbstractIncomingMessage]) -> None:
    # One nack per message, in the order they were read: the quorum queue appends
    # returned messages at its back in the order they come back, so after a read
    # of the whole queue its order is what it was.
    for message in messages:
        await message.nack(requeue=True)


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
