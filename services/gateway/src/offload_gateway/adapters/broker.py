"""The gateway's link to RabbitMQ: connect (and keep trying), declare, publish, read depths.

It is the gateway process's one AMQP connection: the admin API reads queues
and dead letters on channels of its own on the same connection (`channel`).

The gateway must start and answer while RabbitMQ is down: it connects in the
background, retrying every second, and until then `connected` is false, so
submissions get a fast 503 and `/readyz` says not ready. Once connected,
aio-pika's robust connection reconnects by itself after an outage.

At connection time the gateway declares every worker service's topology (the
same declarations, with the same settings, as the workers make), so a job
published before any worker has started is routed to its queue, not dropped.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import ChannelInvalidStateError, ChannelNotFoundEntity
from faststream.rabbit import RabbitBroker

from offload_contracts import JobRequestBase, topology
from offload_runtime.broker import declare_service_topology, make_broker, publish_confirmed
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop, finish
from offload_runtime.settings import RetryTier

log = get_logger("offload.gateway.broker")

RECONNECT_DELAY_S = 1.0
CONNECT_TIMEOUT_S = 10.0
CHANNEL_RESTORE_POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
LOOP_STOP_WAIT_S = 1.0
"""How long a stop lets a try to connect go on before cancelling it (nothing to keep)."""


class QueueCount(NamedTuple):
    """What a passive declare says about a queue."""

    ready: int
    consumers: int


async def plain_channel(connection: AbstractConnection) -> AbstractChannel:
    """A short-lived channel that is not restored, even on a robust connection.

    A robust channel that the broker closes (a passive declare of a missing
    queue: 404) reopens itself, so a call that then opens another and closes
    only that one leaves a channel open for good: six after three reads of two
    missing queues, checked with `rabbitmqctl list_connections channels`. On the
    gateway's one connection they would add up until it could open no more.
    """
    return await aio_pika.Channel(connection, publisher_confirms=False)


async def count_queues(
    open_channel: Callable[[], Awaitable[AbstractChannel]], names: Sequence[str]
) -> dict[str, QueueCount | None]:
    """Ready and consumer counts of each queue by passive declare; None for a missing queue.

    A passive declare of a missing queue closes the channel (404), so the next
    name is read on a fresh one. One channel per call, closed at the end.
    """
    found: dict[str, QueueCount | None] = {}
    channel = await open_channel()
    try:
        for name in names:
            if channel.is_closed:
                channel = await open_channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                found[name] = None
                continue
            result = queue.declaration_result
            found[name] = QueueCount(
                int(result.message_count or 0), int(result.consumer_count or 0)
            )
    finally:
        if not channel.is_closed:
            await channel.close()
    return found


class BrokerLink:
    """One broker connection for the gateway process, and the queue depths it reads."""

    def __init__(
        self,
        url: str,
        *,
        tiers: tuple[RetryTier, ...],
        delivery_limit: int,
        publish_timeout_s: float,
        depth_refresh_s: float,
        services: tuple[str, ...] = topology.WORKER_SERVICES,
        quorum_size: int | None = None,
    ) -> None:
        self.broker: RabbitBroker = make_broker(url, service="gateway", quorum_size=quorum_size)
        self._tiers = tiers
        self._delivery_limit = delivery_limit
        self._publish_timeout_s = publish_timeout_s
        self._depth_refresh_s = depth_refresh_s
        self._services = services
        self._connection: AbstractConnection | None = None
        self._declared = False
        self._depths: dict[str, int] = {}
        self._loop = BackgroundLoop(
            "gateway broker link", self._step, 0, stop_wait_s=LOOP_STOP_WAIT_S
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; returns at once."""
        self._loop.start()

    async def stop(self) -> None:
        # Stopping the link's loop and closing can each wait on a channel whose
        # RPC was cancelled mid-flight (aiormq); a gateway that is stopping must
        # not hang on either, so each wait is bounded.
        await self._loop.stop()
        await finish(asyncio.create_task(self.broker.stop()), STOP_TIMEOUT_S / 2)

    @property
    def connected(self) -> bool:
        """Connected, topology declared, and the connection up right now."""
        connection = self._connection
        return self._declared and connection is not None and connection.connected.is_set()

    async def channel(self) -> AbstractChannel:
        """A new channel (no publisher confirms) on the gateway's connection; close it after use."""
        connection = self._connection
        if not self.connected or connection is None:
            raise ConnectionError("broker not connected")
        return await plain_channel(connection)

    async def queue_counts(self, names: Sequence[str]) -> dict[str, QueueCount | None]:
        """Ready and consumer counts of these queues, read now (None: the queue is missing)."""
        return await count_queues(self.channel, names)

    async def _step(self) -> None:
        """Connect and declare until that succeeds; then read the queue depths.

        Each pass paces itself (a second between tries to connect, `depth_refresh_s`
        between two reads of the depths), so the loop's own interval is 0.
        """
        if self._connection is None:
            try:
                await self._connect_and_declare()
            except Exception as exc:
                log.warning("broker unreachable; retrying", error=repr(exc))
                await self._loop.pause(RECONNECT_DELAY_S)
                return
            log.info("broker connected; topology declared", services=list(self._services))
        await self._refresh_depths()
        await self._loop.pause(self._depth_refresh_s)

    async def _connect_and_declare(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                connection: Any = await self.broker.connect()
        except Exception:
            await self.broker.stop()
            raise
        for service in self._services:
            await declare_service_topology(
                self.broker, service, self._tiers, delivery_limit=self._delivery_limit
            )
        self._declared = True
        self._connection = connection

    # ------------------------------------------------------------------ publishing

    async def publish(self, request: JobRequestBase) -> None:
        """Publish a job request to the `jobs` exchange and wait for the confirm."""
        if not self.connected:
            raise ConnectionError("broker not connected")
        job_type: str = request.type
        body = request.model_dump_json().encode()
        async with asyncio.timeout(self._publish_timeout_s):
            while True:
                try:
                    await publish_confirmed(
                        self.broker,
                        body,
                        exchange=topology.JOBS_EXCHANGE,
                        routing_key=job_type,
                        message_id=request.id,
                    )
                    return
                except ChannelInvalidStateError:
                    # Right after a reconnect the connection is up but the robust
                    # channel is still being restored; nothing was sent, so waiting
                    # for it (within the publish timeout) is safe.
                    await asyncio.sleep(CHANNEL_RESTORE_POLL_S)

    # ------------------------------------------------------------------ queue depths

    def queue_depth(self, service: str) -> int | None:
        """Ready messages in `<service>.jobs` as last read (never a broker call)."""
        return self._depths.get(service)

    @property
    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    async def _refresh_depths(self) -> None:
        """Read each work queue's depth (every `depth_refresh_s`, never per request)."""
        names = [topology.work_queue(service) for service in self._services]
        try:
            # A read that meets a reconnect can wait for it: bound it.
            async with asyncio.timeout(max(5.0, self._depth_refresh_s)):
                counts = await self.queue_counts(names)
            for service, name in zip(self._services, names, strict=True):
                if (count := counts[name]) is not None:
                    self._depths[service] = count.ready
        except Exception as exc:
            log.debug("reading queue depths failed", error=repr(exc))
