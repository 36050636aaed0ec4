"""The consumer watchdog: a worker that is alive and connected must also be consuming.

aio-pika's robust connection restores channels and consumers after most
faults, but a consumer can still be lost with nothing to show for it: a start
cut short by a broker restart, a consumer the broker cancelled or a channel it
closed whose restore failed, the next library bug. The process then looks
healthy, holds its connection, and runs nothing while jobs wait. So every
`interval_s` the watchdog asks the broker itself (a passive declare of the
queue, on a channel of its own) and compares with what this process saw:

- the subscriber is not running (its start was cut short): start it;
- the broker counts no consumer on the queue: this process is not consuming;
- messages were ready at two checks in a row while this process had room for
  more and received none in between: its consumer is not being fed.

Either of the last two re-subscribes (cancel the consumer, consume again). A
subscription that is still not live `give_up_after_s` after it was first
found dead ends the process with a non-zero exit, so that its supervisor
(compose, Kubernetes, `make run`) starts a fresh one; meanwhile `live` is
False and the worker's `/readyz` says not ready.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.rabbit import RabbitBroker
from faststream.rabbit.subscriber import RabbitSubscriber

from offload_runtime import metrics
from offload_runtime.broker import queue_counts, resubscribe
from offload_runtime.consumer import RetryingConsumer
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop
from offload_runtime.settings import ConsumerWatchSettings

log = get_logger("offload.watchdog")


@dataclass(frozen=True)
class Feed:
    """What the consuming process knows of its own subscription."""

    deliveries: Callable[[], int]
    """Deliveries received so far (a counter that only grows)."""
    held: Callable[[], int]
    """Deliveries held now: received, not yet acked or nacked."""
    capacity: int
    """The most it may hold (its prefetch)."""


class ConsumerWatchdog:
    """Keeps one subscriber consuming, or ends the process past `give_up_after_s`."""

    def __init__(
        self,
        *,
        broker: RabbitBroker,
        subscriber: RabbitSubscriber,
        queue: str,
        prepare: Callable[[], Awaitable[None]],
        feed: Feed,
        interval_s: float,
        give_up_after_s: float,
        give_up: Callable[[str], None],
    ) -> None:
        self._broker = broker
        self._subscriber = subscriber
        self._queue = queue
        self._prepare = prepare
        self._feed = feed
        self._interval_s = interval_s
        self._give_up_after_s = give_up_after_s
        self._give_up = give_up
        self._dead_since: float | None = None
        self._last_deliveries = 0
        self._starved_once = False
        self._given_up = False
        self._loop = BackgroundLoop(f"consumer watchdog {queue}", self._watch_once, interval_s)
        self.live = False
        """Whether the last check found the subscription consuming."""

    @property
    def lost(self) -> bool:
        """Whether the last check found the subscription not consuming.

        Unlike `not live`, False before the first check: for a process whose
        readiness must not wait for the watchdog (the notifier's, which serves
        SSE whatever its webhook consumer does).
        """
        return self._dead_since is not None

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        """Stop watching (asked, then cancelled if a check does not end in time)."""
        await self._loop.stop()

    async def _watch_once(self) -> None:
        try:
            async with asyncio.timeout(max(self._interval_s, 5.0)):
                problem = await self.check()
        except Exception as exc:  # the broker did not answer: not live, try again
            problem = f"check failed: {exc!r}"
            log.warning("consumer check failed", queue=self._queue, error=repr(exc))
        self._record(problem)

    async def check(self) -> str | None:
        """One check, acting on what it finds; the problem found, or None when live."""
        if not self._subscriber.running:
            await self._prepare()
            await self._subscriber.start()
            log.info("consumer started by the watchdog", queue=self._queue)
            self._last_deliveries = self._feed.deliveries()
            return None
        ready, consumers = await queue_counts(self._broker, self._queue)
        deliveries = self._feed.deliveries()
        had_room = self._feed.held() < self._feed.capacity
        fed = deliveries != self._last_deliveries
        self._last_deliveries = deliveries
        starved = ready > 0 and had_room and not fed
        problem = None
        if consumers == 0:
            problem = "the broker counts no consumer on the queue"
        elif starved and self._starved_once:
            problem = f"{ready} messages ready and none delivered to this process with room"
        self._starved_once = starved and problem is None
        if problem is not None:
            reason = "no_consumer" if consumers == 0 else "starved"
            log.warning("consumer lost; subscribing again", queue=self._queue, problem=problem)
            metrics.CONSUMER_RESUBSCRIBES.labels(self._queue, reason).inc()
            await resubscribe(self._subscriber)
        return problem

    def _record(self, problem: str | None) -> None:
        self.live = problem is None
        metrics.CONSUMER_LIVE.labels(self._queue).set(1 if self.live else 0)
        now = time.monotonic()
        if self.live:
            if self._dead_since is not None:
                log.info("consumer live again", queue=self._queue)
            self._dead_since = None
            return
        if self._dead_since is None:
            self._dead_since = now
        elif now - self._dead_since >= self._give_up_after_s and not self._given_up:
            self._given_up = True
            self._give_up(
                f"{self._queue}: not consuming for {now - self._dead_since:.1f} s ({problem})"
            )


def watch_consumer(
    consumer: "RetryingConsumer[Any]",
    *,
    prepare: Callable[[], Awaitable[None]],
    settings: ConsumerWatchSettings,
    give_up: Callable[[str], None],
) -> ConsumerWatchdog:
    """The watchdog of a retrying consumer (a worker's jobs, the notifier's webhooks)."""
    return ConsumerWatchdog(
        broker=consumer.broker,
        subscriber=consumer.subscriber,
        queue=consumer.queue,
        prepare=prepare,
        feed=Feed(
            deliveries=lambda: consumer.deliveries,
            held=lambda: consumer.held,
            capacity=consumer.concurrency,
        ),
        interval_s=settings.consumer_check_interval_s,
        give_up_after_s=settings.consumer_give_up_s,
        give_up=give_up,
    )


__all__ = ["ConsumerWatchdog", "Feed", "watch_consumer"]
