"""Stalled work queues: messages ready and no consumer, so nothing will run them.

A worker's own watchdog restarts a worker that stopped consuming, but it cannot
help when no worker runs at all (every replica crashing, scaled to zero with
KEDA down, a deployment gone). The notifier, which already alerts on dead
letters, checks every alerting service's work queue and raises one alert per
stall that lasts `alert_after_s`, and says when it ends.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from offload_contracts.webhooks import QueueStalledAlert
from offload_runtime import metrics
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop

log = get_logger("offload.notifier.stalls")

QueueCounts = Callable[[str], Awaitable[tuple[int, int]]]
"""A queue's (ready messages, consumers), as the broker counts them."""


@dataclass
class StallTracker:
    """Which queues are stalled since when, and which stalls were alerted."""

    alert_after: timedelta
    since: dict[str, datetime] = field(default_factory=dict)
    alerted: set[str] = field(default_factory=set)

    def observe(
        self, queue: str, ready: int, consumers: int, now: datetime
    ) -> QueueStalledAlert | None:
        """Record one reading; the alert to raise, once per stall, when it has lasted."""
        if not (ready > 0 and consumers == 0):
            if queue in self.since:
                log.info("work queue consuming again", queue=queue)
            self.since.pop(queue, None)
            self.alerted.discard(queue)
            return None
        since = self.since.setdefault(queue, now)
        if queue in self.alerted or now - since < self.alert_after:
            return None
        self.alerted.add(queue)
        return QueueStalledAlert(queue=queue, ready=ready, since=since, at=now)


class StallWatch:
    """Reads each work queue every `interval_s` and hands alerts to `raise_alert`."""

    def __init__(
        self,
        *,
        queues: Sequence[tuple[str, str]],
        counts: QueueCounts,
        tracker: StallTracker,
        raise_alert: Callable[[QueueStalledAlert], Awaitable[None]],
        clock: Callable[[], datetime],
        interval_s: float,
    ) -> None:
        self._queues = tuple(queues)
        self._counts = counts
        self._tracker = tracker
        self._raise_alert = raise_alert
        self._clock = clock
        self._loop = BackgroundLoop("stalled queues", self.check, interval_s)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def check(self) -> None:
        """Read every queue once (a queue that cannot be read is skipped until next time)."""
        for queue, service in self._queues:
            try:
                ready, consumers = await self._counts(queue)
            except Exception as exc:
                log.debug("work queue not read", queue=queue, error=repr(exc))
                continue
            metrics.QUEUE_STALLED.labels(queue, service).set(
                1 if ready > 0 and consumers == 0 else 0
            )
            alert = self._tracker.observe(queue, ready, consumers, self._clock())
            if alert is not None:
                await self._raise_alert(alert)
