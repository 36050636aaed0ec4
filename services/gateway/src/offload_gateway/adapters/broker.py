"""The gateway's link to RabbitMQ: connect (and keep trying), declare, publish, read depths.

The gateway must start and answer while RabbitMQ is down: it connects in the
background, retrying every second, and until then `connected` is false, so
submissions get a fast 503 and `/readyz` says not ready. Once connected,
aio-pika's robust connection reconnects by itself after an outage.

At connection time the gateway declares every worker service's topology (the
same declarations, with the same settings, as the workers make), so a job
published before any worker has started is routed to its queue, not dropped.
"""

import asyncio
from typing import Any

from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelInvalidStateError
from faststream.rabbit import RabbitBroker

from offload_contracts import JobRequestBase, topology
from offload_runtime.broker import declare_service_topology, make_broker, publish_confirmed
from offload_runtime.logging import get_logger
from offload_runtime.loops import finish
from offload_runtime.settings import RetryTier

log = get_logger("offload.gateway.broker")

RECONNECT_DELAY_S = 1.0
CONNECT_TIMEOUT_S = 10.0
CHANNEL_RESTORE_POLL_S = 0.05
STOP_TIMEOUT_S = 10.0


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
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; returns at once."""
        self._task = asyncio.create_task(self._run(), name="gateway-broker-link")

    async def stop(self) -> None:
        # Stopping the connecting task and closing can each wait on a channel
        # whose RPC was cancelled mid-flight (aiormq); a gateway that is stopping
        # must not hang on either, so each wait is bounded (`finish` never awaits
        # a cancelled task without a deadline).
        if self._task is not None:
            self._task.cancel()
            await finish(self._task, STOP_TIMEOUT_S / 2)
        await finish(asyncio.create_task(self.broker.stop()), STOP_TIMEOUT_S / 2)

    @property
    def connected(self) -> bool:
        """Connected, topology declared, and the connection up right now."""
        connection = self._connection
        return self._declared and connection is not None and connection.connected.is_set()

    async def _run(self) -> None:
        connection = await self._connect()
        await self._declare()
        self._connection = connection
        log.info("broker connected; topology declared", services=list(self._services))
        await self._refresh_depths_forever(connection)

    async def _connect(self) -> AbstractConnection:
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    connection: Any = await self.broker.connect()
                return connection
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker unreachable; retrying", error=repr(exc))
                await self.broker.stop()
                await asyncio.sleep(RECONNECT_DELAY_S)

    async def _declare(self) -> None:
        while True:
            try:
                for service in self._services:
                    await declare_service_topology(
                        self.broker, service, self._tiers, delivery_limit=self._delivery_limit
                    )
                self._declared = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("declaring the topology failed; retrying", error=repr(exc))
                await asyncio.sleep(RECONNECT_DELAY_S)

    # ------------------------------------------------------------------ publishing

    async def publish(self, request: JobRequestBase) -> None:
        """Publish a job request to the `jobs` exchange and wait for the confirm."""
        if not self.connected:
            raise ConnectionError("broker not connected")
        job_type: str = request.type  # type: ignore[attr-defined]
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

    async def _refresh_depths_forever(self, connection: AbstractConnection) -> None:
        """Passive-declare each work queue every `depth_refresh_s` (never per request)."""
        channel: Any = None
        while True:
            try:
                # A robust channel waits for a reconnect before answering: bound it.
                async with asyncio.timeout(max(5.0, self._depth_refresh_s)):
                    if channel is None or channel.is_closed:
                        channel = await connection.channel(publisher_confirms=False)
                    for service in self._services:
                        # robust=False: a robust passive declare would return a cached
                        # queue object, not a fresh count.
                        queue = await channel.declare_queue(
                            topology.work_queue(service), passive=True, robust=False
                        )
                        result = queue.declaration_result
                        self._depths[service] = int(result.message_count or 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("reading queue depths failed", error=repr(exc))
                channel = None
            await asyncio.sleep(self._depth_refresh_s)
