"""Redis connection (one node or a cluster) and the script batcher that merges concurrent
jobs' calls.

A redis-py call costs ~0.26 ms of client CPU alone and ~0.09 ms when
concurrent calls share one pipeline (STACK-NOTES), so the job store sends
every transition through a `ScriptBatcher`: calls made in the same event-loop
tick go out as one pipeline of EVALSHAs (on a cluster, one per node).
"""

import asyncio
import hashlib
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload_runtime import outage
from offload_runtime.keys import RedisKeys
from offload_runtime.outage import NotReplicated

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""`OFFLOAD_REDIS_URL` schemes that name a Redis Cluster (the second with TLS)."""


class RedisUnreachable(RuntimeError):
    """No node of the configured Redis (or Redis Cluster) answered."""


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect_redis(
    url: str,
    *,
    retries: int = outage.CLIENT_RETRIES,
    max_connections: int = 100,
    pool_wait_s: float = 10.0,
) -> "aioredis.Redis":
    """A client that retries on connection loss, so a Redis restart heals by itself.

    It follows the outage policy (`offload_runtime.outage`, rule 1): the default
    rides out a few seconds; a request path that should answer "try later" at
    once (the gateway) passes fewer retries.

    `url` names one node (`redis://host:port/db`) or a Redis Cluster
    (`redis+cluster://[user:password@]host:port[,host:port...]`, any of its
    nodes; `rediss+cluster://` for TLS): the client then finds every node
    itself, follows slot moves and failovers, and sends each command to the
    node that holds its keys.

    On one node the pool is a blocking one: past `max_connections` in use, a
    caller waits up to `pool_wait_s` for a free connection. redis-py's default
    pool raises `MaxConnectionsError` instead, which turned a burst of requests
    into 500s. A cluster client keeps `max_connections` per node.
    """
    retry = outage.client_retry(retries)
    if is_cluster_url(url):
        return _connect_cluster(url, retry=retry, max_connections=max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_s,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The `host:port` addresses of a `redis+cluster://` URL; ValueError when it has none."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for address in filter(None, hosts.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{address!r} in the Redis Cluster URL is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a redis+cluster:// URL names at least one node (host:port)")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: leave the URL's path empty")
    return nodes


def _connect_cluster(url: str, *, retry: Retry, max_connections: int) -> "aioredis.Redis":
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":")
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme] == "rediss",
        decode_responses=True,
        max_connections=max_connections,
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    client.commands_parser = _StreamReadKeys()
    # RedisCluster has the command methods of a single-node client; every caller uses
    # only those (and pipelines, which it groups by node itself).
    return cast("aioredis.Redis", client)


class _StreamReadKeys(AsyncCommandsParser):
    """redis-py's parser of a command's keys (which a cluster client routes by), reading
    the keys of `XREAD` and `XREADGROUP` from the command itself.

    Their keys move with their options, so redis-py asks a node (`COMMAND GETKEYS`)
    before each one: an extra round trip per stream read. Worse, inside a `MULTI`
    redis-py finds a command's node in a thread with an event loop of its own, and
    that question then runs on a connection of the client's loop, which breaks it
    ("attached to a different loop") and the calls sharing it.
    """

    async def get_keys(self, *args: Any) -> tuple[str, ...] | None:
        keys = stream_read_keys(args)
        return keys if keys is not None else await super().get_keys(*args)


def stream_read_keys(args: tuple[Any, ...]) -> tuple[str, ...] | None:
    """The keys of an `XREAD` or `XREADGROUP` command (the first half of what follows
    `STREAMS`); None for any other command, or options this does not know."""
    words = [arg.decode() if isinstance(arg, bytes) else str(arg) for arg in args]
    if not words:
        return None
    name = words[0].upper()
    if name == "XREAD":
        at = 1
    elif name == "XREADGROUP" and len(words) > 3 and words[1].upper() == "GROUP":
        at = 4  # past GROUP <group> <consumer>
    else:
        return None
    while at < len(words):
        option = words[at].upper()
        if option in ("COUNT", "BLOCK"):
            at += 2
        elif option == "NOACK":
            at += 1
        elif option == "STREAMS":
            rest = words[at + 1 :]
            if not rest or len(rest) % 2:
                return None
            return tuple(rest[: len(rest) // 2])
        else:
            return None
    return None


async def xread_streams(
    client: "aioredis.Redis", positions: dict[str, str], *, count: int, block_ms: int
) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """`XREAD` of several streams after their positions: `[(key, entries), ...]`.

    One call on a single node. A Redis Cluster refuses an `XREAD` whose keys
    lie in several slots, so there the keys of each slot (of one shard: they
    share its hash tag) are read by one call, all slots at once; the call then
    returns when every one of them has, so within at most `block_ms`.
    """
    if not isinstance(client, RedisCluster):
        streams: dict[Any, Any] = dict(positions)
        reply: Any = await client.xread(streams, count=count, block=block_ms)
        return [(str(key), entries) for key, entries in reply or []]
    by_slot: dict[int, dict[Any, Any]] = {}
    for key, position in positions.items():
        by_slot.setdefault(client.keyslot(key), {})[key] = position
    replies: list[Any] = await asyncio.gather(
        *(client.xread(streams, count=count, block=block_ms) for streams in by_slot.values())
    )
    return [(str(key), entries) for reply in replies for key, entries in reply or []]


Call = tuple[tuple[str, ...], tuple[Any, ...], asyncio.Future[Any], int]
"""One caller's script call: keys, arguments, its future, the replicas it waits for."""


class ScriptBatcher:
    """Run one Lua script for many callers, one pipeline per event-loop tick.

    A call may ask that its write reach `replicas` replicas before it returns
    (`WAIT`, bounded by `replica_timeout_ms`): the pipeline then ends, on each
    node such a call wrote to, with one `WAIT`. `WAIT` counts the replicas that
    hold everything the connection wrote so far, and a pipeline runs on one
    connection per node, so one `WAIT` covers every call of the batch on that
    node. A call whose node answers fewer replicas raises `NotReplicated`.
    """

    def __init__(
        self, client: "aioredis.Redis", source: str, *, replica_timeout_ms: int = 500
    ) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()
        self._replica_timeout_ms = replica_timeout_ms
        self._pending: list[Call] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(
        self, keys: tuple[str, ...], args: tuple[Any, ...], *, replicas: int = 0
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future, replicas))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[Call]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # every caller must hear about it, even on cancel
            for _, _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            return
        for (_, _, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[Call]) -> list[Any]:
        results = await self._pipeline(batch)
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis restarted or was flushed, or a replica took over: load the script (on a
            # cluster, on every master) and run those calls again.
            # Only calls that failed with NOSCRIPT ran nothing, so only they are retried.
            await self._client.script_load(self._source)
            retry = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            again = await self._pipeline([batch[i] for i in retry])
            for i, result in zip(retry, again, strict=True):
                results[i] = result
        return results

    def _node_of(self, key: str) -> ClusterNode | None:
        """The cluster node a key's write goes to (None on a single node)."""
        if isinstance(self._client, RedisCluster):
            return self._client.get_node_from_key(key)
        return None

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        # The replicas each node's writes must reach: the most any of its calls asks.
        waits: dict[ClusterNode | None, int] = {}
        for keys, _, _, replicas in batch:
            if replicas:
                node = self._node_of(keys[0])
                waits[node] = max(waits.get(node, 0), replicas)
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args, _, _ in batch:
                # Through execute_command: a cluster pipeline refuses its `evalsha` method,
                # but routes a raw EVALSHA by its keys' slot (all of one call share one),
                # sending one pipeline per node.
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            for node, replicas in waits.items():
                # Last on that node's connection, so it covers every write before it.
                target = {"target_nodes": node} if node else {}
                pipe.execute_command("WAIT", replicas, self._replica_timeout_ms, **target)
            try:
                replies = list(await pipe.execute(raise_on_error=False))
            except (AttributeError, RuntimeError) as exc:
                # redis-py 8.1's cluster pipeline, meeting a dead node, closes every
                # connection of the client (`cluster_client.aclose()` in its retry). A
                # concurrent call whose connection was still in its handshake then writes
                # to no writer ("'NoneType' object has no attribute 'writelines'") or to a
                # closed transport (uvloop: "unable to perform operation on
                # <TCPTransport closed=True ...>"), before anything of the batch was sent
                # on it. Seen in a master failover under load: an outage, not a bug.
                raise RedisConnectionError(f"connection closed under the call ({exc})") from exc
        results, acknowledged = (
            replies[: len(batch)],
            dict(zip(waits, replies[len(batch) :], strict=True)),
        )
        for i, (keys, _, _, replicas) in enumerate(batch):
            if not replicas or isinstance(results[i], Exception):
                continue
            got = acknowledged[self._node_of(keys[0])]
            if isinstance(got, Exception) or int(got) < replicas:
                results[i] = NotReplicated(
                    f"{'no answer' if isinstance(got, Exception) else got} of {replicas} "
                    f"replicas acknowledged the write within {self._replica_timeout_ms} ms"
                )
        return results


class ShardCountMismatch(RuntimeError):
    """This process's `OFFLOAD_REDIS_SHARDS` is not the one the deployment was created with."""


async def check_shard_count(client: "aioredis.Redis", keys: RedisKeys) -> None:
    """Record the shard count on a deployment's first start; refuse any other count later.

    A job's keys are found from its id modulo the shard count, so a process
    with another count would look for jobs where they are not, and a relay
    would miss whole shards of events.
    """
    try:
        reply = await client.set(keys.shard_count, keys.shards, nx=True, get=True)
    except (RedisClusterException, RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnreachable(f"no Redis node answered: {exc}") from exc
    stored = None if reply is None else str(reply)
    if stored is not None and stored != str(keys.shards):
        raise ShardCountMismatch(
            f"OFFLOAD_REDIS_SHARDS is {keys.shards} here, but this deployment's Redis was "
            f"created with {stored} shards (key {keys.shard_count!r}): set "
            f"OFFLOAD_REDIS_SHARDS={stored}, or point the service at another Redis or prefix"
        )
