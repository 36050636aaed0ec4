"""One shared Redis stream reader per process, fanning entries out to every SSE client.

A blocking `XREAD` per client would hold one Redis connection per client.
Instead one loop issues a single `XREAD BLOCK` over every key some client of
this process follows, and hands each entry to that key's followers (the
entry object is shared, so its JSON is parsed at most once).

How a follower gets every entry after its position exactly once:

1. It reads the stored entries after its position with `XRANGE` (pages).
2. It joins the hub at the last id it read. Joining is synchronous, so the
   hub's position for the key (what it has already handed out) cannot move
   meanwhile. A new key starts at the follower's position; a key the hub
   already follows may be ahead, and the follower fills that gap with one
   more `XRANGE`, or behind, and the follower drops what it already has.
3. From then on the hub pushes every new entry to it; a follower only ever
   returns ids greater than the last it returned.

A key added while the `XREAD` is blocked would only join the next read, so
the hub wakes its own read by appending to a per-process wake stream that
every read includes. Keys are spread over a few such loops by hash, so that
one event does not cost a read over every followed key.

A follower that falls too far behind (a client that stops reading) leaves
the hub and catches up from Redis again, so a slow client costs memory for at
most `queue_limit` entries.
"""

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from offload_notifier.streams import StreamBounds, StreamEntry
from offload_runtime.logging import get_logger
from offload_runtime.redis import xread_streams
from offload_runtime.stream_ids import stream_id

log = get_logger("offload.notifier.streams")

HISTORY_PAGE = 500
READ_COUNT = 1000
WAKE_TTL_S = 3600


class _Watch:
    """A key the hub follows: how far it has handed entries out, and to whom."""

    __slots__ = ("followers", "position", "position_id")

    def __init__(self, position_id: str) -> None:
        self.position_id = position_id
        self.position = stream_id(position_id)
        self.followers: set[Follower] = set()


def _release(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Follower:
    """One client's subscription to one stream key (the `Subscription` port)."""

    __slots__ = ("_buffer", "_hub", "_joined", "_key", "_last", "_live", "_waiter", "last_id")

    def __init__(self, hub: "RedisStreamHub", key: str, after: str) -> None:
        self._hub = hub
        self._key = key
        self.last_id = after
        self._last = stream_id(after)
        self._buffer: deque[StreamEntry] = deque()  # read by this follower from Redis
        self._live: deque[StreamEntry] = deque()  # pushed by the hub
        self._joined = False
        self._waiter: asyncio.Future[None] | None = None

    async def next(self, timeout: float) -> StreamEntry | None:
        while True:
            entry = self._take(self._buffer) or self._take(self._live)
            if entry is not None:
                return entry
            if not self._joined:
                await self._catch_up()
                continue
            if timeout <= 0:
                return None
            # One future and one timer per wait (asyncio.wait_for costs twice that,
            # and this runs once per event per client).
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not (self._buffer or self._live or not self._joined):
                return None  # timed out

    def _take(self, queue: deque[StreamEntry]) -> StreamEntry | None:
        while queue:
            entry = queue.popleft()
            position = entry.position
            if position > self._last:
                self._last = position
                self.last_id = entry.id
                return entry
        return None

    async def _catch_up(self) -> None:
        page = await self._hub.range_after(self._key, self.last_id, HISTORY_PAGE)
        self._buffer.extend(page)
        if len(page) == HISTORY_PAGE:
            return  # more history: hand this page out first
        read_to = page[-1].id if page else self.last_id
        hub_position = self._hub.join(self._key, self, read_to)
        self._joined = True
        if stream_id(hub_position) > stream_id(read_to):
            self._buffer.extend(await self._hub.range_between(self._key, read_to, hub_position))

    def push(self, entry: StreamEntry) -> None:
        """Called by the hub for each new entry (synchronously, in order)."""
        if len(self._live) >= self._hub.queue_limit:
            # The client stopped reading: drop what is queued and re-read from Redis later.
            self._hub.leave(self._key, self)
            self._joined = False
            self._live.clear()
        else:
            self._live.append(entry)
        if self._waiter is not None:
            _release(self._waiter)

    def close(self) -> None:
        if self._joined:
            self._hub.leave(self._key, self)
            self._joined = False


class _Reader:
    """One `XREAD BLOCK` loop over a share of the followed keys."""

    def __init__(
        self, client: "aioredis.Redis", *, name: str, wake_key: str, block_ms: int
    ) -> None:
        self._client = client
        self._name = name
        self._wake_key = wake_key
        self._wake_position = "0-0"
        self._block_ms = block_ms
        self.watches: dict[str, _Watch] = {}
        self._reading: frozenset[str] | None = None  # keys of the XREAD in flight
        self._wake_sent = False
        self._changed = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[Any]] = set()

    def join(self, key: str, follower: Follower, position_id: str) -> str:
        watch = self.watches.get(key)
        if watch is None:
            watch = self.watches[key] = _Watch(position_id)
            self._wake()
        watch.followers.add(follower)
        return watch.position_id

    def leave(self, key: str, follower: Follower) -> None:
        watch = self.watches.get(key)
        if watch is None:
            return
        watch.followers.discard(follower)
        if not watch.followers:
            del self.watches[key]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        # Cancelling an in-flight redis-py command is not reliable (a cancel that
        # lands while the connection is being set up can be lost, leaving the loop
        # waiting forever), so the loop is asked to stop and woken instead.
        self._stopping = True
        self._changed.set()
        if self._task is not None:
            if self._reading is not None:
                await self._send_wake()
            done, _ = await asyncio.wait({self._task}, timeout=self._block_ms / 1000 + 1)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1)
        for wake in list(self._wakes):
            wake.cancel()
        await asyncio.gather(*self._wakes, return_exceptions=True)
        try:
            await self._client.delete(self._wake_key)
        except Exception:  # best effort: the key expires anyway
            log.debug("wake key not deleted", exc_info=True)

    def _wake(self) -> None:
        """Make a new key part of the next read at once."""
        if self._reading is None:
            self._changed.set()  # the loop is idle or between reads: it will see the key
            return
        if self._wake_sent:
            return
        self._wake_sent = True
        task = asyncio.get_running_loop().create_task(self._send_wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _send_wake(self) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, WAKE_TTL_S)
                await pipe.execute()
        except Exception:
            # The read's block timeout bounds the delay for the new key instead.
            log.warning("could not wake the stream reader", exc_info=True)

    async def _run(self) -> None:
        while not self._stopping:
            if not self.watches:
                self._changed.clear()
                await self._changed.wait()
                continue
            watches = dict(self.watches)
            streams: dict[Any, Any] = {key: watch.position_id for key, watch in watches.items()}
            streams[self._wake_key] = self._wake_position
            self._reading = frozenset(watches)
            self._wake_sent = False
            try:
                # One XREAD on one node; one per key on a cluster (see xread_streams).
                reply: Any = await xread_streams(
                    self._client, streams, count=READ_COUNT, block_ms=self._block_ms
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("stream read failed; retrying", exc_info=True)
                self._reading = None
                await asyncio.sleep(0.5)
                continue
            self._reading = None
            for key, entries in reply or ():
                if key == self._wake_key:
                    self._wake_position = entries[-1][0]
                    continue
                watch = watches.get(key)
                if watch is None or self.watches.get(key) is not watch:
                    continue  # every follower left (and maybe others joined anew) meanwhile
                _dispatch(watch, entries)


def _dispatch(watch: _Watch, entries: list[tuple[str, dict[str, str]]]) -> None:
    for entry_id, fields in entries:
        entry = StreamEntry(entry_id, fields.get("data", ""))
        if entry.position <= watch.position:
            continue
        watch.position = entry.position
        watch.position_id = entry_id
        for follower in list(watch.followers):
            follower.push(entry)


class RedisStreamHub:
    """The `StreamSource` port on Redis: a few shared `XREAD` loops for every follower.

    Keys are spread over `readers` loops by hash. One loop over every key
    would re-send (and Redis re-register) all N keys on every read, so each
    event would cost O(N); with R readers it costs O(N / R), at the price of
    R blocked connections.
    """

    def __init__(
        self,
        client: "aioredis.Redis",
        *,
        wake_key: str,
        block_ms: int,
        queue_limit: int,
        readers: int = 1,
    ) -> None:
        self._client = client
        self.queue_limit = queue_limit
        self._readers = [
            _Reader(client, name=f"sse-reader-{n}", wake_key=f"{wake_key}:{n}", block_ms=block_ms)
            for n in range(readers)
        ]

    # ------------------------------------------------------------------ the port

    @asynccontextmanager
    async def follow(self, key: str, after: str) -> AsyncIterator[Follower]:
        follower = Follower(self, key, after)
        try:
            yield follower
        finally:
            follower.close()

    async def bounds(self, key: str) -> StreamBounds:
        try:
            info: dict[str, Any] = await self._client.xinfo_stream(key)
        except aioredis.ResponseError:  # no such key
            return StreamBounds(None, None)
        first, last = info.get("first-entry"), info.get("last-entry")
        if not first or not last:
            return StreamBounds(None, None)
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        return StreamBounds(first[0], last[0], trimmed)

    # ------------------------------------------------------------------ followers

    async def range_after(self, key: str, after: str, count: int) -> list[StreamEntry]:
        entries: Any = await self._client.xrange(key, f"({after}", "+", count=count)
        return [StreamEntry(entry_id, fields.get("data", "")) for entry_id, fields in entries]

    async def range_between(self, key: str, after: str, upto: str) -> list[StreamEntry]:
        entries: Any = await self._client.xrange(key, f"({after}", upto)
        return [StreamEntry(entry_id, fields.get("data", "")) for entry_id, fields in entries]

    def join(self, key: str, follower: Follower, position_id: str) -> str:
        """Add a follower whose entries up to `position_id` are in hand; the hub's position."""
        return self._reader(key).join(key, follower, position_id)

    def leave(self, key: str, follower: Follower) -> None:
        self._reader(key).leave(key, follower)

    def _reader(self, key: str) -> _Reader:
        return self._readers[zlib.crc32(key.encode()) % len(self._readers)]

    @property
    def keys_followed(self) -> int:
        return sum(len(reader.watches) for reader in self._readers)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    async def stop(self) -> None:
        """End every loop by waking its blocked read (see `_Reader.stop`)."""
        await asyncio.gather(*(reader.stop() for reader in self._readers))

    @property
    def running(self) -> bool:
        return all(reader.running for reader in self._readers)
