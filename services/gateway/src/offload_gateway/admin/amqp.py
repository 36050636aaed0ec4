"""Queue statistics and dead-letter mechanics over plain AMQP (no management plugin).

Every call opens its own short-lived channel on the gateway's one connection
(`BrokerLink.channel`, a plain channel: see `plain_channel`). What AMQP 0-9-1
can tell, and what it cannot:

- A passive `queue.declare` answers a queue's **ready** messages and its
  **consumers**. It does not count unacknowledged (in-flight) messages: that
  figure exists only in RabbitMQ's management API / `rabbitmqctl`, which
  Offload does not depend on. `QueueStats.unacked` is therefore always `None`
  here, and says so rather than guess.
- A passive declare of a queue that does not exist closes the channel
  (404 NOT_FOUND); the reader then opens a fresh channel and goes on.
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
  notice; `AmqpQueues` serialises them per queue within one process.
- A channel that did `basic.get` on a quorum queue is counted as a consumer
  while it is open, so every window uses its own channel, closed at the end.
"""

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from offload_contracts import topology
from offload_gateway.adapters.broker import BrokerLink, count_queues
from offload_gateway.admin.queues import (
    DeadLetter,
    DeadLetterPage,
    HeldMessage,
    QueueMissing,
    QueueRef,
    QueueStats,
    SweepReport,
    TakeDecision,
)
from offload_runtime.broker import publish_confirmed

OpenChannel = Callable[[], Awaitable[AbstractChannel]]


class AmqpQueues:
    """The admin API's `QueueStatsReader` and `DeadLetterQueues` over AMQP channels."""

    def __init__(self, open_channel: OpenChannel) -> None:
        self._open_channel = open_channel
        self._queue_locks: dict[str, asyncio.Lock] = {}

    def _lock(self, queue: str) -> asyncio.Lock:
        return self._queue_locks.setdefault(queue, asyncio.Lock())

    # ------------------------------------------------------------------ inspection

    async def stats(self, refs: Sequence[QueueRef]) -> list[QueueStats]:
        """Ready and consumer counts of each queue, by passive declare."""
        counts = await count_queues(self._open_channel, [ref.name for ref in refs])
        return [QueueStats.of(ref, counts[ref.name]) for ref in refs]

    async def depth(self, queue: str) -> int:
        """Ready messages in one queue; `QueueMissing` if it is not declared."""
        count = (await count_queues(self._open_channel, [queue]))[queue]
        if count is None:
            raise QueueMissing(queue)
        return count.ready

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
            channel = await self._open_channel()
            held: list[AbstractIncomingMessage] = []
            try:
                declared = await _passive(channel, queue)
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
            channel = await self._open_channel()
            kept: list[AbstractIncomingMessage] = []
            try:
                declared = await _passive(channel, queue)
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
            channel = await self._open_channel()
            try:
                declared = await _passive(channel, queue)
                result = await declared.purge()
                return int(getattr(result, "message_count", 0) or 0)
            finally:
                if not channel.is_closed:
                    await channel.close()


async def _passive(channel: AbstractChannel, queue: str) -> Any:
    try:
        return await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity as exc:
        raise QueueMissing(queue) from exc


async def _return_in_order(messages: list[AbstractIncomingMessage]) -> None:
    # One nack per message, in the order they were read: the quorum queue appends
    # returned messages at its back in the order they come back, so after a read
    # of the whole queue its order is what it was.
    for message in messages:
        await message.nack(requeue=True)


class BrokerRepublisher:
    """The admin API's `Republisher`: confirmed publishes on the gateway's broker link."""

    def __init__(self, link: BrokerLink, *, timeout_s: float) -> None:
        self._link = link
        self._timeout_s = timeout_s

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def publish_job(self, body: bytes, routing_key: str, job_id: str) -> None:
        async with asyncio.timeout(self._timeout_s):
            await publish_confirmed(
                self._link.broker,
                body,
                exchange=topology.JOBS_EXCHANGE,
                routing_key=routing_key,
                message_id=job_id,
            )

    async def publish_delivery(self, body: bytes, webhook_id: str) -> None:
        # Straight to the notifier's work queue (default exchange), as the notifier
        # itself schedules a delivery; unroutable (no notifier ever declared it) raises.
        async with asyncio.timeout(self._timeout_s):
            await publish_confirmed(
                self._link.broker,
                body,
                routing_key=topology.work_queue(topology.NOTIFIER_SERVICE),
                message_id=webhook_id,
            )
