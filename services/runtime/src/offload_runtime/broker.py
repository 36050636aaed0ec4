"""Broker wiring and topology (DESIGN §3), applying what STACK-NOTES warns about.

- Publishes are persistent, confirmed, and raise when unroutable.
- Every subscriber gets its own prefetch (= the service's concurrency).
- The connection carries a heartbeat and the service's name, and reconnects.
- Queues are durable quorum queues declared idempotently at every start.
- `OFFLOAD_RABBITMQ_URL` may name every node of a cluster: a connection starts on
  the first node that answers and moves to the next whenever its node goes.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
)
from aio_pika.connection import make_url
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)
from faststream.rabbit.schemas.queue import QuorumQueueArgs
from faststream.rabbit.subscriber import RabbitSubscriber

from offload_contracts import topology
from offload_runtime.logging import get_logger
from offload_runtime.settings import RetryTier, parse_rabbitmq_nodes

HEARTBEAT_S = 30
CONNECT_TIMEOUT_S = 10.0
"""Bounds each connection attempt: aio-pika's has none by default, and an attempt whose
socket the broker closed mid-handshake was seen waiting for ever."""
START_TIMEOUT_S = 30.0

CONNECTION_LOST = (
    AMQPConnectionError,
    ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
    StopAsyncIteration,
)
"""What a call raises when RabbitMQ goes away under it (or is not there yet).

aio-pika raises StopAsyncIteration when the broker closes the socket during the handshake."""

log = get_logger("offload.broker")


def amqp_url(url: str, *, connection_name: str) -> str:
    """Add a heartbeat and a connection name unless the URL already sets them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", str(HEARTBEAT_S))
    query.setdefault("name", connection_name)
    return urlunsplit(parts._replace(query=urlencode(query)))


T = TypeVar("T")


class NodeFailoverConnection(RobustConnection):
    """aio-pika's robust connection, over every node of a cluster: when its node goes, the next.

    aio-pika reconnects to the one URL it was given (it has no list of hosts, as
    RabbitMQ's Java and .NET clients do), so a client of a stopped node would
    retry that node until it came back. aio-pika calls `_on_connection_close`
    both when an open connection closes and when an attempt to connect fails;
    moving `url` on to the next node there makes its next attempt, after
    `reconnect_interval`, go to that node. Channels and consumers are then
    restored there as after any reconnection.
    """

    def __init__(self, url: Any, *args: Any, nodes: Sequence[str], **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self._nodes = [make_url(node) for node in nodes]
        self._at = 0

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if len(self._nodes) > 1 and not self._close_called:
            self._at = (self._at + 1) % len(self._nodes)
            self.url = self._nodes[self._at]
        await super()._on_connection_close(closing)


async def _first_node_that_answers(
    nodes: Sequence[str], connect: Callable[[Sequence[str]], Awaitable[T]]
) -> T:
    """`connect(nodes in failover order)`, starting at each node in turn until one answers.

    aio-pika fails fast on its first attempt (one node); a service starting while
    one node is down must still start, on another.
    """
    for start in range(len(nodes)):
        order = [*nodes[start:], *nodes[:start]]
        try:
            return await connect(order)
        except CONNECTION_LOST:
            if start == len(nodes) - 1:
                raise
            log.warning("RabbitMQ node unreachable; trying the next", node=start + 1)
    raise AssertionError("unreachable: there is always at least one node")


async def connect_robust_nodes(url: str, **kwargs: Any) -> AbstractRobustConnection:
    """`aio_pika.connect_robust` for an `OFFLOAD_RABBITMQ_URL` that may name several nodes."""

    async def connect(order: Sequence[str]) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            order[0],
            connection_class=functools.partial(NodeFailoverConnection, nodes=order),
            **kwargs,
        )

    return await _first_node_that_answers(parse_rabbitmq_nodes(url), connect)


def default_quorum_size(url: str) -> int | None:
    """Replicas for quorum queues when not configured: one per node named, if several.

    With one node named, the argument is left out (RabbitMQ's default): queues
    declared before the setting existed carry none, and RabbitMQ refuses to
    redeclare a queue with an argument it was not created with.
    """
    nodes = parse_rabbitmq_nodes(url)
    return len(nodes) if len(nodes) > 1 else None


class ClusterBroker(RabbitBroker):
    """A RabbitBroker whose connection knows every node of `OFFLOAD_RABBITMQ_URL`.

    It also carries the replica count its quorum queues are declared with, so
    every declaration made through it (topology, subscribers) agrees.
    """

    def __init__(
        self, url: str, *, connection_name: str, quorum_size: int | None = None, **kwargs: Any
    ) -> None:
        self.nodes = [
            amqp_url(node, connection_name=connection_name) for node in parse_rabbitmq_nodes(url)
        ]
        self.quorum_size = quorum_size if quorum_size is not None else default_quorum_size(url)
        super().__init__(self.nodes[0], **kwargs)

    async def _connect(self) -> Any:
        async def connect(order: Sequence[str]) -> Any:
            # FastStream passes these to `aio_pika.connect_robust` as they are.
            self._connection_kwargs.update(
                url=order[0],
                connection_class=functools.partial(NodeFailoverConnection, nodes=order),
            )
            return await super(ClusterBroker, self)._connect()

        return await _first_node_that_answers(self.nodes, connect)


def quorum_size_of(broker: RabbitBroker) -> int | None:
    """The replica count the broker's quorum queues are declared with (None: RabbitMQ's)."""
    return broker.quorum_size if isinstance(broker, ClusterBroker) else None


class WatchedBroker(ClusterBroker):
    """A RabbitBroker whose start survives RabbitMQ going away half-way.

    FastStream's `start` connects, declares and consumes in one go, and raises
    when the connection drops in between: the worker then exited although
    RabbitMQ was back a second later (and under `make run`, honcho stopped
    every service with it). Here such a start is logged and its subscribers
    are left to the consumer watchdog (`offload_runtime.watchdog`), which
    starts them once RabbitMQ answers, or ends the process past its bound.
    """

    async def start(self) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await super().start()
        except CONNECTION_LOST as exc:
            log.warning("start cut short; the watchdog subscribes", error=repr(exc))


def make_broker(
    url: str,
    *,
    service: str,
    graceful_timeout: float = 15.0,
    watched: bool = False,
    quorum_size: int | None = None,
) -> RabbitBroker:
    """A RabbitBroker for one Offload service (`watched`: its subscribers have a watchdog).

    `url` may name several nodes of a cluster (comma-separated); `quorum_size`
    unset means `default_quorum_size(url)`.
    """
    return (WatchedBroker if watched else ClusterBroker)(
        url,
        connection_name=f"offload-{service}",
        quorum_size=quorum_size,
        default_channel=Channel(on_return_raises=True),
        graceful_timeout=graceful_timeout,
        timeout=CONNECT_TIMEOUT_S,
        # FastStream's per-message "Received"/"Processed" lines cost ~25% of the
        # hot path; Offload logs job transitions itself, so they go to DEBUG.
        log_level=logging.DEBUG,
        apply_types=False,
        # The broker's own connection attempts during a RabbitMQ outage retry
        # every second, so a restarted broker is picked up quickly.
        reconnect_interval=1.0,
    )


# ---------------------------------------------------------------------- topology


def jobs_exchange() -> RabbitExchange:
    return RabbitExchange(topology.JOBS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)


def dead_exchange() -> RabbitExchange:
    return RabbitExchange(topology.DEAD_EXCHANGE, type=ExchangeType.DIRECT, durable=True)


def events_exchange() -> RabbitExchange:
    return RabbitExchange(topology.EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True)


def _quorum(arguments: QuorumQueueArgs, quorum_size: int | None) -> QuorumQueueArgs:
    """The arguments, with the replica count when one is set (absent: RabbitMQ's default)."""
    if quorum_size is not None:
        arguments["x-quorum-initial-group-size"] = quorum_size
    return arguments


def work_queue(service: str, *, delivery_limit: int, quorum_size: int | None = None) -> RabbitQueue:
    """`<service>.jobs`: quorum, dead-letters to `jobs.dead`, poison parked after N deliveries."""
    return RabbitQueue(
        topology.work_queue(service),
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=topology.work_binding(service),
        arguments=_quorum(
            {
                "x-dead-letter-exchange": topology.DEAD_EXCHANGE,
                "x-dead-letter-routing-key": service,
                "x-delivery-limit": delivery_limit,
            },
            quorum_size,
        ),
    )


def retry_queue(service: str, tier: RetryTier, *, quorum_size: int | None = None) -> RabbitQueue:
    """`<service>.retry.<tier>`: holds a message for the tier's TTL, then back to the work queue.

    Queue-level TTL, never per-message (a per-message TTL only expires at the
    head and would block shorter delays behind longer ones).
    """
    return RabbitQueue(
        topology.retry_queue(service, tier.name),
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments=_quorum(
            {
                "x-message-ttl": tier.delay_ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": topology.work_queue(service),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
            quorum_size,
        ),
    )


def dead_queue(service: str, *, quorum_size: int | None = None) -> RabbitQueue:
    """`<service>.dead`: failed-for-good jobs, poison and over-the-limit messages."""
    return RabbitQueue(
        topology.dead_queue(service),
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=service,
        arguments=_quorum({}, quorum_size),
    )


# Topology is declared on a channel of its own, straight through aio-pika.
# FastStream's declarer caches queue objects by queue and ignores the channel:
# a work queue declared through `broker.declare_queue` first would be handed,
# channel and all, to the subscriber, which then consumes on the default
# channel with no prefetch (found by a test: 100 jobs ran at concurrency 10).
_TOPOLOGY_CHANNEL = Channel()


async def _topology_channel(broker: RabbitBroker) -> AbstractRobustChannel:
    return await broker.config.channel_manager.get_channel(_TOPOLOGY_CHANNEL)


async def _declare_queue(channel: AbstractRobustChannel, queue: RabbitQueue) -> AbstractRobustQueue:
    return await channel.declare_queue(
        queue.name, durable=True, arguments=dict(queue.arguments or {})
    )


async def declare_exchanges(broker: RabbitBroker) -> dict[str, AbstractRobustExchange]:
    """Declare the three exchanges (idempotent). The broker must be connected."""
    channel = await _topology_channel(broker)
    return {
        exchange.name: await channel.declare_exchange(
            exchange.name, type=exchange.type.value, durable=True
        )
        for exchange in (jobs_exchange(), dead_exchange(), events_exchange())
    }


async def declare_service_topology(
    broker: RabbitBroker,
    service: str,
    tiers: Sequence[RetryTier],
    *,
    delivery_limit: int,
) -> dict[str, AbstractRobustQueue]:
    """Declare and bind one service's work, retry and dead queues (idempotent).

    The broker must be connected. Safe to call from every replica at every start.
    """
    exchanges = await declare_exchanges(broker)
    channel = await _topology_channel(broker)
    queues: dict[str, AbstractRobustQueue] = {}
    replicas = quorum_size_of(broker)

    work = await _declare_queue(
        channel, work_queue(service, delivery_limit=delivery_limit, quorum_size=replicas)
    )
    await work.bind(exchanges[topology.JOBS_EXCHANGE], routing_key=topology.work_binding(service))
    queues[work.name] = work

    dead = await _declare_queue(channel, dead_queue(service, quorum_size=replicas))
    await dead.bind(exchanges[topology.DEAD_EXCHANGE], routing_key=service)
    queues[dead.name] = dead

    for tier in tiers:
        retry = await _declare_queue(channel, retry_queue(service, tier, quorum_size=replicas))
        queues[retry.name] = retry
    return queues


async def publish_confirmed(
    broker: RabbitBroker,
    body: bytes,
    *,
    exchange: str = "",
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
) -> None:
    """Publish one persistent message and wait for the broker's confirm.

    Raises if the broker refuses it, cannot route it, or is unreachable.
    """
    await broker.publish(
        body,
        exchange=exchange or None,
        routing_key=routing_key,
        persist=True,
        mandatory=True,
        headers=dict(headers or {}),
        message_id=message_id,
        content_type="application/json",
    )


async def queue_counts(broker: RabbitBroker, queue: str) -> tuple[int, int]:
    """The broker's own count of a queue's ready messages and consumers (a passive declare).

    On a short-lived channel of its own: a passive declare of a missing queue
    closes its channel, and no other user of a shared channel should pay for that.
    """
    connection = await broker.connect()
    channel = await connection.channel(publisher_confirms=False)
    try:
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True, timeout=5)
        return int(declared.message_count or 0), int(declared.consumer_count or 0)
    finally:
        with contextlib.suppress(*CONNECTION_LOST, RuntimeError):
            await channel.close()


async def resubscribe(subscriber: RabbitSubscriber) -> None:
    """Cancel a running subscriber's consumer and consume again, on the same channel.

    FastStream 0.7 has no public way to do this. Its `stop()` then `start()`
    would first wait `graceful_timeout` for the jobs in flight and, meanwhile,
    leave what is delivered unacked and unhandled; the jobs in flight keep
    their channel here, so their acks still land.
    """
    queue = subscriber._queue_obj
    if queue is None:
        raise RuntimeError("the subscriber has not started")
    # A channel being restored consumes again with the tags it knows: wait for
    # that first, or the restore and this could each leave a consumer behind.
    if isinstance(queue.channel, AbstractRobustChannel):
        async with asyncio.timeout(5):
            await queue.channel.ready()
    tag = subscriber._consumer_tag
    if tag is not None:
        # RabbitMQ answers cancel-ok for a tag it no longer knows; aio-pika
        # forgets the tag either way, so its reconnection restores the new one only.
        with contextlib.suppress(*CONNECTION_LOST):
            async with asyncio.timeout(5):
                await queue.cancel(tag)
    subscriber._consumer_tag = await queue.consume(
        subscriber.consume,  # type: ignore[arg-type]
        arguments=subscriber.consume_args,
        timeout=5,
    )
