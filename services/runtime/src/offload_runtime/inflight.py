"""Unacked deliveries per work queue, as the consuming workers report them.

AMQP's passive declare answers a queue's ready messages and its consumers,
not the messages delivered and not yet acknowledged, and Offload does not
depend on RabbitMQ's management plugin. The workers know that figure: each
one counts the deliveries it holds (handed to it, not yet acked or nacked)
and writes it to Redis every `REPORT_INTERVAL_S`, in one hash per queue,
keyed by a replica id, with the time of the report. A reader sums the fresh
reports and drops the stale ones (a replica that died without saying so).

So the admin API's `unacked` is a figure at most about a second old:

- a queue without consumers holds no unacked messages (0), except while an
  operator's dead-letter browse has them in hand;
- a queue whose consumers report: the sum of their reports;
- a queue whose consumers have not reported (yet): unknown (None).

The runner reports for work queues, the notifier for `notifier.jobs`.
"""

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from offload_runtime.keys import RedisKeys
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop, finish

REPORT_INTERVAL_S = 1.0
STALE_AFTER_S = 5.0
"""A report older than this is a replica gone without a word: it no longer counts."""
STOP_WAIT_S = 2.0

log = get_logger("offload.inflight")


class InFlightReporter:
    """Writes one replica's count of unacked deliveries of `queue` to Redis, every second."""

    def __init__(
        self,
        client: "aioredis.Redis",
        keys: RedisKeys,
        queue: str,
        count: Callable[[], int],
        *,
        interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        self._client = client
        self._key = keys.in_flight(queue)
        self._count = count
        self._interval_s = interval_s
        self._replica = uuid.uuid4().hex[:12]
        self._loop = BackgroundLoop(f"in-flight reports {queue}", self._report, interval_s)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        """Stop reporting and withdraw this replica's figure (best effort, bounded)."""
        if not self._loop.running:
            return
        await self._loop.stop()
        await finish(asyncio.create_task(self._withdraw()), STOP_WAIT_S)

    async def _withdraw(self) -> None:
        await self._client.hdel(self._key, self._replica)

    async def _report(self) -> None:
        try:
            await self._client.hset(self._key, self._replica, _report(self._count()))
        except Exception as exc:  # Redis away: the next report will do
            log.debug("in-flight report failed", error=repr(exc))


async def read_unacked(
    client: "aioredis.Redis", keys: RedisKeys, queues: Sequence[str]
) -> dict[str, int | None]:
    """Each queue's unacked deliveries as reported by its consumers; None if none reports."""
    async with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.hgetall(keys.in_flight(queue))
        reports: list[dict[str, str]] = await pipe.execute()
    now_ms = _now_ms()
    totals: dict[str, int | None] = {}
    stale: list[tuple[str, str]] = []
    for queue, by_replica in zip(queues, reports, strict=True):
        fresh = []
        for replica, report in by_replica.items():
            count, at_ms = _parse(report)
            if count is None or now_ms - at_ms > STALE_AFTER_S * 1000:
                stale.append((queue, replica))
            else:
                fresh.append(count)
        totals[queue] = sum(fresh) if fresh else None
    if stale:
        async with client.pipeline(transaction=False) as pipe:
            for queue, replica in stale:
                pipe.hdel(keys.in_flight(queue), replica)
            await pipe.execute()
    return totals


def _report(count: int) -> str:
    return f"{count} {_now_ms()}"


def _parse(report: str) -> tuple[int | None, int]:
    count, _, at_ms = report.partition(" ")
    try:
        return int(count), int(at_ms)
    except ValueError:
        return None, 0


def _now_ms() -> int:
    return int(time.time() * 1000)
