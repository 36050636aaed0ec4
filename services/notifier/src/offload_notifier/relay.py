"""The outbox relay (DESIGN §4, §6): every job event, from the outbox to where it is needed.

The job store appends each transition's event to its shard's outbox stream in
the same Lua call as the transition. One relay per shard reads that outbox
through a consumer group shared by every notifier replica and, batch by batch:

1. appends each event to its tenant's stream of the same shard (`GET /v1/events`),
2. schedules a webhook delivery when the job asked for one and wants this event,
3. publishes each event to the `jobs.events` exchange,

waits for all of that (Redis replies and broker confirms, together), and only
then acknowledges the batch. A notifier that dies mid-batch leaves its entries
pending; another replica claims them once they have been idle long enough.
Delivery is therefore at least once: consumers dedupe by `event_id`.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from offload_contracts import JobEvent
from offload_contracts.webhooks import WebhookDelivery
from offload_notifier import metrics
from offload_notifier.webhooks import delivery_for
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop

log = get_logger("offload.notifier.relay")

STOP_WAIT_S = 5.0
"""How long a stop lets the batch in hand finish before it is cancelled."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox entry: its stream id, the event JSON, and the job's webhook spec JSON."""

    id: str
    data: str
    webhook: str | None = None


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """An event on its way out: parsed, and its JSON as users receive it.

    That is the JSON the store wrote, unless it carries internal fields (trace
    context, when tracing is on): then it is written again without them.
    """

    event: JobEvent
    json: str


class Outbox(Protocol):
    """The outbox stream, seen through this process's consumer in the shared group."""

    async def read_new(self) -> list[OutboxEntry]:
        """Entries never delivered to any consumer (waits a while when there are none)."""
        ...

    async def read_own_pending(self) -> list[OutboxEntry]:
        """Entries delivered to this consumer and not yet acknowledged."""
        ...

    async def claim_stale(self) -> list[OutboxEntry]:
        """Take over entries left pending too long by other consumers (dead notifiers)."""
        ...

    async def ack(self, ids: Sequence[str]) -> None: ...

    async def trim_acknowledged(self) -> int:
        """Delete entries every consumer group has acknowledged; how many went."""
        ...


class TenantStreams(Protocol):
    async def append(self, events: Sequence[RelayedEvent]) -> None:
        """Append each event to its tenant's stream; returns once Redis has them."""
        ...


class Publisher(Protocol):
    """The broker side; each call returns once every message in it is confirmed."""

    async def schedule_webhooks(self, deliveries: Sequence[WebhookDelivery]) -> None: ...

    async def publish_events(self, events: Sequence[RelayedEvent]) -> None: ...


class Relay:
    """Relays one outbox (one shard's) until stopped; any number of replicas may run one each."""

    def __init__(
        self,
        outbox: Outbox,
        tenant_streams: TenantStreams,
        publisher: Publisher,
        *,
        claim_every_s: float,
        trim_every_s: float,
        retry_after_failure_s: float,
        clock: Callable[[], float] = time.monotonic,
        name: str = "outbox-relay",
    ) -> None:
        self._outbox = outbox
        self._tenant_streams = tenant_streams
        self._publisher = publisher
        self._claim_every_s = claim_every_s
        self._trim_every_s = trim_every_s
        self._retry_s = retry_after_failure_s
        self._clock = clock
        self._retry_own = True
        self._next_claim = self._next_trim = clock()
        # Interval 0: each pass waits in its own read (or in its pause after a failure).
        self._loop = BackgroundLoop(name, self.step, 0, stop_wait_s=STOP_WAIT_S)
        self.healthy = True

    # ------------------------------------------------------------------ one batch

    async def relay(self, entries: Sequence[OutboxEntry]) -> int:
        """Relay one batch, then acknowledge it. Raises (acknowledging nothing) on failure."""
        if not entries:
            return 0
        events: list[RelayedEvent] = []
        deliveries: list[WebhookDelivery] = []
        for entry in entries:
            try:
                event = JobEvent.model_validate_json(entry.data)
            except ValidationError:
                # Written by a buggy or foreign producer: it can never be relayed, and
                # keeping it would only have it claimed again and again.
                log.error("unreadable outbox entry dropped", entry_id=entry.id)
                metrics.RELAYED.labels("unreadable").inc()
                continue
            public = entry.data if event.traceparent is None else event.public_json()
            events.append(RelayedEvent(event, public))
            delivery = delivery_for(event, entry.webhook)
            if delivery is not None:
                deliveries.append(delivery)
        if events:
            await asyncio.gather(
                self._tenant_streams.append(events),
                self._publisher.schedule_webhooks(deliveries),
                self._publisher.publish_events(events),
            )
        await self._outbox.ack([entry.id for entry in entries])
        metrics.RELAYED.labels("relayed").inc(len(events))
        return len(events)

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._retry_own = True
        self._loop.start()

    async def stop(self) -> None:
        """Finish the batch in hand (or the blocked read), then stop; bounded."""
        await self._loop.stop()

    @property
    def running(self) -> bool:
        return self._loop.running

    async def step(self) -> None:
        """One pass: own pending entries first (a failed batch), then stale ones, then new ones.

        A failure is counted and logged here, and the pass after it retries the
        entries this replica holds, after `retry_after_failure_s`.
        """
        try:
            if self._retry_own:
                entries = await self._outbox.read_own_pending()
                self._retry_own = bool(entries)
                await self.relay(entries)
                return
            now = self._clock()
            if now >= self._next_claim:
                self._next_claim = now + self._claim_every_s
                claimed = await self._outbox.claim_stale()
                if claimed:
                    log.info("claimed stale outbox entries", count=len(claimed))
                    await self.relay(claimed)
            if now >= self._next_trim:
                self._next_trim = now + self._trim_every_s
                await self._outbox.trim_acknowledged()
            await self.relay(await self._read_new())
            self.healthy = True
        except Exception:
            self.healthy = False
            metrics.RELAY_FAILURES.inc()
            log.warning("relay batch failed; retrying its entries", exc_info=True)
            self._retry_own = True
            await self._loop.pause(self._retry_s)

    async def _read_new(self) -> list[OutboxEntry]:
        # A blocked read would delay shutdown by up to its block time: race it with stop.
        read = asyncio.ensure_future(self._outbox.read_new())
        stopping = asyncio.ensure_future(self._loop.until_stopped())
        done, _ = await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if read in done:
            stopping.cancel()
            return read.result()
        read.cancel()
        # Bounded: redis-py can swallow a cancel (see offload_runtime.loops).
        await asyncio.wait({read}, timeout=STOP_WAIT_S)
        return []


class ShardRelays:
    """One `Relay` per shard outbox, run side by side in this process.

    Every replica runs all of them; the consumer group of each outbox shares
    its entries between the replicas.
    """

    def __init__(self, relays: Sequence[Relay]) -> None:
        self.relays = list(relays)

    def start(self) -> None:
        for relay in self.relays:
            relay.start()

    async def stop(self) -> None:
        await asyncio.gather(*(relay.stop() for relay in self.relays))

    @property
    def running(self) -> bool:
        return all(relay.running for relay in self.relays)

    @property
    def healthy(self) -> bool:
        return all(relay.healthy for relay in self.relays)
