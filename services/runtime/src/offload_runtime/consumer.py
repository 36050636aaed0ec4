"""The retrying consumer: reliability written once, for every queue that runs work (DESIGN §5).

Like dramatiq's middleware, it owns what the broker needs and nothing else:
the subscription (manual ack, prefetch, the raw message), ack and nack,
retry tiers, dead letters with their `x-offload-*` headers, the count of
deliveries held, and shutdown. What a message means is the `Work`'s business:
the job runner adds job-state transitions, the notifier's deliverer makes a
webhook attempt. Neither touches the broker.

For each delivery:

1. `Work.decode`. What no contract accepts (`InvalidMessage`) goes to the dead
   queue, then `Work.failed(None, ...)`, then ack.
2. `Work.begin`. False (a duplicate, a stale or cancelled job) → ack.
3. `Work.run`. It returns → `Work.succeeded`, then ack. It raises:
   - `Deferred(delay_s)`: the message waits that long again in a retry tier,
     no attempt counted, then ack;
   - `TransientError` (or any unknown exception) with attempts left:
     `Work.retrying` records it first (a short tier can deliver the next
     attempt before a later write would land), then the next attempt's body
     goes to the retry tier, then ack;
   - `PermanentError`, or attempts exhausted: the dead queue, then
     `Work.failed`, then ack.
4. Anything else that fails (a hook or a publish: Redis or RabbitMQ stayed
   unreachable past the outage policy): the message goes back to its queue
   after a pause (`offload_runtime.outage`, rule 3).
5. Cancelled by shutdown: nothing is sent, so the broker redelivers it.

Every publish waits for the broker's confirm, and ack always comes last, so a
process that dies at any point leaves its message unacked for redelivery.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Generic, TypeVar

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage
from faststream.rabbit.subscriber import RabbitSubscriber

from offload_contracts import topology
from offload_runtime import metrics, outage
from offload_runtime.broker import publish_confirmed, quorum_size_of, work_queue
from offload_runtime.errors import Deferred, JobFailure
from offload_runtime.logging import get_logger
from offload_runtime.retry_tiers import exhausted, next_tier, pick_tier
from offload_runtime.settings import RetryTier
from offload_runtime.store import utcnow
from offload_runtime.work import Delivery, Failure, InvalidMessage, Work

ItemT = TypeVar("ItemT")

log = get_logger("offload.consumer")


class RetryingConsumer(Generic[ItemT]):
    """Consumes `<service>.jobs`, running `work` for each message (see the module's doc)."""

    def __init__(
        self,
        *,
        service: str,
        broker: RabbitBroker,
        work: Work[ItemT],
        tiers: Sequence[RetryTier],
        concurrency: int,
        delivery_limit: int,
        description: str,
    ) -> None:
        if not tiers:
            raise ValueError("a consumer needs at least one retry tier")
        self.service = service
        self.broker = broker
        self.work = work
        self.tiers = tuple(tiers)
        self.concurrency = concurrency
        self._delivery_limit = delivery_limit
        self._description = description
        self.held = 0
        """Deliveries this process holds: handed to it, not yet acked or nacked."""
        self.deliveries = 0
        """Deliveries handed to this process so far (a counter that only grows)."""
        self._subscriber: RabbitSubscriber | None = None

    @property
    def subscriber(self) -> RabbitSubscriber:
        """The subscriber `subscribe()` registered (for the consumer watchdog)."""
        if self._subscriber is None:
            raise RuntimeError("subscribe() first")
        return self._subscriber

    @property
    def queue(self) -> str:
        return topology.work_queue(self.service)

    def subscribe(self) -> RabbitSubscriber:
        """Register the subscriber on the broker (no I/O; the broker declares on start)."""

        # The handler gets the raw message, not a decoded body: it must see the
        # bytes (to park what no contract accepts), the redelivered flag, and
        # ack itself. (With apply_types off, FastStream would otherwise spread a
        # JSON object body into keyword arguments.)
        async def passthrough(message: RabbitMessage) -> RabbitMessage:
            return message

        subscriber = self.broker.subscriber(
            work_queue(
                self.service,
                delivery_limit=self._delivery_limit,
                quorum_size=quorum_size_of(self.broker),
            ),
            channel=Channel(prefetch_count=self.concurrency),
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            decoder=passthrough,
            title=f"{self.queue}:consume",
            description=self._description,
        )
        subscriber(self.handle)
        self._subscriber = subscriber
        return subscriber

    # ------------------------------------------------------------------ one delivery

    async def handle(self, message: RabbitMessage) -> None:
        """Process one delivery. Never raises, except when cancelled by shutdown."""
        self.held += 1
        self.deliveries += 1
        try:
            await self._handle(message)
        finally:
            self.held -= 1

    async def _handle(self, message: RabbitMessage) -> None:
        delivery = Delivery(message.body, bool(message.raw_message.redelivered))
        try:
            item = self.work.decode(delivery)
        except InvalidMessage as exc:
            failure = Failure(type="invalid_message", message=str(exc), retryable=False)
            try:
                await self._dead_letter(message.body, failure, attempt=0, message_id=None)
                await self.work.failed(None, message.body, failure)
            except Exception:
                await _requeue(message)
                return
            await _ack(message)
            return
        with self.work.context(item):
            try:
                await self._process(item, message)
            except Exception:
                await _requeue(message)

    async def _process(self, item: ItemT, message: RabbitMessage) -> None:
        work = self.work
        if not await work.begin(item):
            await _ack(message)
            return
        try:
            result = await work.run(item)
        except Deferred as deferred:
            tier = pick_tier(self.tiers, 1, deferred.delay_s)
            await self._publish_retry(message.body, tier, work.message_id(item))
            await _ack(message)
            return
        except Exception as exc:
            if not isinstance(exc, JobFailure):
                log.warning("work raised an unclassified error", exc_info=True)
            await self._retry_or_fail(item, message, Failure.of(exc))
            return
        await work.succeeded(item, result)
        await _ack(message)

    async def _retry_or_fail(self, item: ItemT, message: RabbitMessage, failure: Failure) -> None:
        work = self.work
        attempt, max_attempts = work.attempts(item)
        tier = (
            next_tier(self.tiers, attempt, max_attempts, failure.retry_after)
            if failure.retryable
            else None
        )
        if tier is None:
            if failure.retryable:
                failure = replace(
                    failure, message=exhausted(failure.message, attempt, max_attempts)
                )
            await self._dead_letter(
                message.body, failure, attempt=attempt, message_id=work.message_id(item)
            )
            await work.failed(item, message.body, failure)
        elif await work.retrying(item, failure, tier):
            await self._publish_retry(
                work.next_attempt(item, tier, failure.retry_after), tier, work.message_id(item)
            )
        await _ack(message)

    # ------------------------------------------------------------------ publishing

    async def _publish_retry(self, body: bytes, tier: RetryTier, message_id: str) -> None:
        await publish_confirmed(
            self.broker,
            body,
            routing_key=topology.retry_queue(self.service, tier.name),
            message_id=message_id,
        )

    async def _dead_letter(
        self, body: bytes, failure: Failure, *, attempt: int, message_id: str | None
    ) -> None:
        headers: dict[str, Any] = {
            topology.HEADER_ERROR: failure.message,
            topology.HEADER_ERROR_TYPE: failure.type,
            topology.HEADER_ATTEMPT: attempt,
            topology.HEADER_FAILED_AT: utcnow().isoformat(),
            topology.HEADER_SOURCE_QUEUE: self.queue,
        }
        if failure.http_status is not None:
            headers[topology.HEADER_HTTP_STATUS] = str(failure.http_status)
        await publish_confirmed(
            self.broker,
            body,
            exchange=topology.DEAD_EXCHANGE,
            routing_key=self.service,
            message_id=message_id,
            headers=headers,
        )
        metrics.DEAD_LETTERS.labels(topology.dead_queue(self.service), failure.type).inc()


async def _requeue(message: RabbitMessage) -> None:
    # Redis or the broker stayed unreachable past what the store and the publisher
    # wait for. An unacked message on a live channel would sit here for ever, so
    # hand it back to the queue after a pause (`offload_runtime.outage`, rule 3).
    log.error("message could not be recorded; returning it to the queue", exc_info=True)
    await asyncio.sleep(outage.REQUEUE_PAUSE_S)
    try:
        await message.nack(requeue=True)
    except Exception:
        log.warning("nack failed; the message will be redelivered", exc_info=True)


async def _ack(message: RabbitMessage) -> None:
    """Ack; if the channel died meanwhile, the broker redelivers and the work dedupes."""
    try:
        await message.ack()
    except Exception:
        log.warning("ack failed; the message will be redelivered", exc_info=True)


__all__ = ["Delivery", "Failure", "InvalidMessage", "RetryingConsumer", "Work"]
