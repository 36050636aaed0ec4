"""What Offload does while Redis is unreachable: one policy, in one place.

A Redis restart must lose no job and hold no caller for ever. So:

1. Every client rides out a blip: a command that loses its connection is
   sent again on a fresh one, backing off from 50 ms to 2 s, `CLIENT_RETRIES`
   times (a few seconds). A caller that should answer "try later" at once
   (the gateway's request path) asks for fewer.
2. A job's state change, past that, keeps trying once every
   `TRANSITION_RETRY_S` for up to the worker's `redis_outage_wait_s`
   (`OFFLOAD_REDIS_OUTAGE_WAIT_S`, 5 min): a Redis restart neither fails the
   job nor runs it twice. Its message stays unacked meanwhile.
3. Past that, the retrying consumer hands the message back to its queue after
   `REQUEUE_PAUSE_S` (nack with requeue): nothing is lost, and RabbitMQ's
   delivery limit parks a message that keeps coming back.

Background loops need nothing more: a step that fails is logged and the loop
tries again at its next step (`offload_runtime.loops`).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload_runtime.logging import get_logger

CLIENT_RETRIES = 8
"""How many times a client sends a command again after losing its connection."""
TRANSITION_RETRY_S = 1.0
"""The pause between two tries of a state change while Redis is away."""
REQUEUE_PAUSE_S = 1.0
"""How long a consumer holds a message it could not record before handing it back."""

UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    # A Redis Cluster master lost: its slots answer CLUSTERDOWN or TRYAGAIN (the command
    # did not run) until a replica takes over.
    ClusterError,
    TryAgainError,
    RedisClusterException,
)
"""The errors that mean Redis (or a cluster master) is away, rather than a wrong command."""


class NotReplicated(RedisError):
    """A write was made on its master, but fewer replicas than asked acknowledged it in time
    (`OFFLOAD_REDIS_WAIT_REPLICAS`). It may reach them later, or be lost if the master dies
    first. A state change waits it out like an outage (rule 2)."""


T = TypeVar("T")

log = get_logger("offload.outage")


def client_retry(retries: int = CLIENT_RETRIES) -> Retry:
    """Rule 1: a redis-py `Retry` for a connection pool."""
    return Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries)


async def ride_out(call: Callable[[], Awaitable[T]], wait_s: float) -> T:
    """Rule 2: `call()`, tried again while Redis is unreachable, for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await call()
        except (*UNREACHABLE, NotReplicated):
            if time.monotonic() >= deadline:
                raise
            log.warning("redis unavailable; waiting for it", exc_info=True)
            await asyncio.sleep(TRANSITION_RETRY_S)


__all__ = [
    "CLIENT_RETRIES",
    "REQUEUE_PAUSE_S",
    "TRANSITION_RETRY_S",
    "UNREACHABLE",
    "NotReplicated",
    "client_retry",
    "ride_out",
]
