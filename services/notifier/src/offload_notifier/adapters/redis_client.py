"""The notifier's Redis client: a bounded pool whose callers wait for a connection.

redis-py's default asyncio pool raises `MaxConnectionsError` past 100
connections in use. A thousand SSE clients connecting at once each make a few
short Redis calls, so the notifier's pool makes them queue for a connection
instead of failing: the burst is served a little later, never refused.
"""

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

POOL_WAIT_S = 10.0


def connect_pooled_redis(url: str, *, max_connections: int) -> "aioredis.Redis":
    """A client that waits for a free connection and retries on connection loss."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)
