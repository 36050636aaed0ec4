"""One shared Redis reader per process, fanning stream entries out to every SSE client.

A client never reads Redis for live events: one loop per process does, and
hands each new entry of a stream to that stream's followers in process (the
entry object is shared, so its JSON is parsed and encoded at most once). What
that loop reads does not grow with the number of clients:

- **Job streams are learnt of from the event feed.** Every transition appends
  its event to the job's stream and to the outbox in one Lua call, so the
  outbox announces every new job-stream entry. The loop reads the outbox (a
  plain `XREAD`, not the relay's consumer group: it takes nothing from the
  relay) and, for the jobs some client here follows, reads their new entries
  with one pipelined `XRANGE` each. An event costs one outbox entry and, when
  someone here follows its job, one `XRANGE`, however many clients follow it
  and however many jobs are followed.
- **Other streams** (a tenant's `GET /v1/events`, written by the relay after
  the outbox entry) are read by key: one `XREAD` key per followed stream, not
  per client. A tenant's clients share one key.

How a follower gets every entry after its position exactly once:

1. It reads the stored entries after its position with `XRANGE` (pages).
2. It joins the hub at the last id it read. Joining is synchronous, so the
   hub's position for the stream (what it has already handed out) cannot move
   meanwhile. A new stream starts at the follower's position, and a job stream
   is read once more right away (its feed entry may have been read before the
   stream was followed); a stream the hub already follows may be ahead, and the
   follower fills that gap with one more `XRANGE`, or behind, and the follower
   drops what it already has.
3. From then on the hub pushes every new entry to it. Every read of a stream
   starts at the hub's position for it, and the hub hands out only entries
   past that position, in order; a follower only ever returns ids greater
   than the last it returned.

The outbox is trimmed by the relay once acknowledged, so a loop that fell
behind (or lost Redis for a while) may miss feed entries. The loop blocks on
the outbox, then reads on without blocking, each time in one `MULTI` with the
outbox's `entries-added` counter: whenever it has read to the end, the entries
it read since it was last there must add up to what the counter grew by. When
they do not, every followed job stream is read again from the hub's position
for it (a resync), so nothing is lost, only delayed.

A client that stops reading costs memory for at most `queue_limit` entries:
past that it leaves the hub, drops its queue, and when it reads again it
catches up from Redis like a new follower, in order and without duplicates.
Other clients are never held: handing an entry out only appends it to each
follower's queue.

Sharding (DESIGN §4) changes what the loop reads, not how it hands out: one
outbox per shard (a read per shard's slot), and once the transition script
writes the tenant's per-shard stream too, tenant streams are learnt of from
the feed like job streams.
"""

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import redis.asyncio as aioredis

from offload_notifier import metrics
from offload_notifier.streams import START, StreamBounds, StreamEntry
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import get_logger
from offload_runtime.loops import BackgroundLoop
from offload_runtime.stream_ids import stream_id

log = get_logger("offload.notifier.streams")

HISTORY_PAGE = 500
READ_COUNT = 1000
RANGE_PIPELINE = 500
"""Job streams read again in one pipeline during a resync."""
WAKE_TTL_S = 3600
RETRY_S = 0.5
IDLE_CHECK_S = 1.0


class _Watch:
    """A stream the hub follows: how far it has handed entries out, and to whom."""

    __slots__ = ("followers", "key", "position", "position_id")

    def __init__(self, key: str, position_id: str) -> None:
        self.key = key
        self.position_id = position_id
        self.position = stream_id(position_id)
        self.followers: set[Follower] = set()


def _release(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Follower:
    """One client's subscription to one stream (the `Subscription` port)."""

    __slots__ = (
        "_buffer",
        "_hub",
        "_job_id",
        "_joined",
        "_key",
        "_last",
        "_live",
        "_waiter",
        "last_id",
    )

    def __init__(self, hub: "RedisStreamHub", key: str, after: str, job_id: str | None) -> None:
        self._hub = hub
        self._key = key
        self._job_id = job_id
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
        watch, created = self._hub.join(self._key, self._job_id, self, read_to)
        self._joined = True
        if created:
            if self._job_id is not None:
                await self._hub.refresh(watch)
        elif watch.position > stream_id(read_to):
            gap = await self._hub.range_between(self._key, read_to, watch.position_id)
            self._buffer.extend(gap)

    def push(self, entry: StreamEntry) -> None:
        """Called by the hub for each new entry (synchronously, in order)."""
        if len(self._live) >= self._hub.queue_limit:
            # The client stopped reading: drop what is queued and re-read from Redis later.
            metrics.SSE_FELL_BEHIND.inc()
            self.close()
            self._live.clear()
        else:
            self._live.append(entry)
        if self._waiter is not None:
            _release(self._waiter)

    def close(self) -> None:
        if self._joined:
            self._hub.leave(self._key, self._job_id, self)
            self._joined = False


class _Feed:
    """Where the loop is in the outbox, and whether it has seen every entry up to there.

    `added` is the outbox's `entries-added` when the loop last read up to its
    end, and `read_since` how many entries it has read after that point: when
    it reads up to the end again, the two must add up, or entries were trimmed
    before the loop read them.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.position = START
        self.added: int | None = None  # None: not started (or restarted): take the end as is
        self.read_since = 0

    def restart(self) -> None:
        self.added = None

    def note(self, entries: list[Any]) -> None:
        """Entries read outside a counted read (a blocking one): counted at the next."""
        if entries and self.added is not None:
            self.position = entries[-1][0]
            self.read_since += len(entries)

    def advance(self, entries: list[Any], info: dict[str, Any] | None, count: int) -> bool:
        """Account for one read; True when the feed may not have told of every new entry
        since the last read, so every followed job stream must be read again."""
        if info is None:  # no outbox (yet, or Redis lost it)
            restarted = self.added != 0
            self.position, self.added, self.read_since = START, 0, 0
            return restarted
        added = int(info.get("entries-added", 0))
        last = str(info.get("last-generated-id") or START)
        if self.added is None:
            # Taken up at its end: what came before is read from the streams themselves.
            self.position, self.added, self.read_since = last, added, 0
            return True
        if entries:
            self.position = entries[-1][0]
        if len(entries) == count and self.position != last:
            self.read_since += len(entries)  # not at the end yet: check when it is
            return False
        missed = added - self.added != self.read_since + len(entries)
        self.position, self.added, self.read_since = last, added, 0
        return missed


class RedisStreamHub:
    """The `StreamSource` port on Redis: one shared reading loop for every follower.

    `feed` is the outbox: without it (or for streams followed without a job id)
    streams are read by key.
    """

    def __init__(
        self,
        client: "aioredis.Redis",
        *,
        wake_key: str,
        block_ms: int,
        queue_limit: int,
        feed: str | None = None,
        name: str = "sse-reader",
    ) -> None:
        self._client = client
        self.queue_limit = queue_limit
        self._wake_key = wake_key
        self._wake_position = START
        self._block_ms = block_ms
        self._feed = _Feed(feed) if feed is not None else None
        self._by_key: dict[str, _Watch] = {}  # streams read by key
        self._by_job: dict[str, _Watch] = {}  # job streams learnt of from the feed
        self._waiting = False  # the blocking read is in flight
        self._fresh = True  # the last read found something: read again before blocking
        self._announced: set[str] = set()  # followed jobs the feed announced, not yet read
        self._wake_sent = False
        self._changed = asyncio.Event()
        self._stopping = False
        self._wakes: set[asyncio.Task[Any]] = set()
        self._loop = BackgroundLoop(name, self._step, interval_s=0, stop_wait_s=block_ms / 1000 + 1)

    # ------------------------------------------------------------------ the port

    @asynccontextmanager
    async def follow(self, key: str, after: str) -> AsyncIterator[Follower]:
        """Every entry of `key` after `after`, the stream read by key."""
        follower = Follower(self, key, after, None)
        try:
            yield follower
        finally:
            follower.close()

    @asynccontextmanager
    async def follow_job(self, job_id: str, key: str, after: str) -> AsyncIterator[Follower]:
        """Every entry of job `job_id`'s stream `key` after `after`, learnt of from the feed."""
        follower = Follower(self, key, after, job_id if self._feed is not None else None)
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

    def join(
        self, key: str, job_id: str | None, follower: Follower, position_id: str
    ) -> tuple[_Watch, bool]:
        """Add a follower whose entries up to `position_id` are in hand: the hub's watch of
        the stream, and whether it was created by this join."""
        watches = self._by_key if job_id is None else self._by_job
        name = key if job_id is None else job_id
        watch = watches.get(name)
        created = watch is None
        if watch is None:
            # A stream read by key, or the first job stream (the feed is read only while
            # some job stream is followed), joins the next read at once.
            if job_id is None or not self._by_job:
                self._wake()
            watch = watches[name] = _Watch(key, position_id)
        watch.followers.add(follower)
        return watch, created

    def leave(self, key: str, job_id: str | None, follower: Follower) -> None:
        watches = self._by_key if job_id is None else self._by_job
        name = key if job_id is None else job_id
        watch = watches.get(name)
        if watch is None:
            return
        watch.followers.discard(follower)
        if not watch.followers:
            del watches[name]

    async def refresh(self, watch: _Watch) -> None:
        """Read `watch`'s stream past the hub's position and hand out what is new."""
        await self._read_again([watch])

    @property
    def keys_followed(self) -> int:
        return len(self._by_key) + len(self._by_job)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stopping = False
        self._loop.start()

    async def stop(self) -> None:
        """End the loop, waking its blocked read (a cancelled redis-py read can hang)."""
        self._stopping = True
        self._changed.set()
        if self._waiting:
            await self._send_wake()
        await self._loop.stop()
        for wake in list(self._wakes):
            wake.cancel()
        await asyncio.gather(*self._wakes, return_exceptions=True)
        try:
            await self._client.delete(self._wake_key)
        except Exception:  # best effort: the key expires anyway
            log.debug("wake key not deleted", exc_info=True)

    @property
    def running(self) -> bool:
        return self._loop.running

    # ------------------------------------------------------------------ the loop

    async def _step(self) -> None:
        if self._stopping:
            return
        if not self._by_key and not self._by_job:
            # Nothing followed: read nothing, and take the feed up again from its end
            # (a new follower reads its own stream up to then).
            if self._feed is not None:
                self._feed.restart()
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), IDLE_CHECK_S)
            return
        try:
            if self._fresh or self._announced:
                self._fresh = await self._read_once()
            else:
                self._fresh = await self._wait()
        except Exception:
            self._fresh = True
            if self._feed is not None:
                # What the feed said meanwhile is unknown: take it up again from its end
                # (which reads every followed job stream once, after that).
                self._feed.restart()
            await self._loop.pause(RETRY_S)
            raise

    def _streams(self, feed: "_Feed | None") -> dict[Any, Any]:
        streams: dict[Any, Any] = {key: watch.position_id for key, watch in self._by_key.items()}
        if feed is not None and feed.added is not None:
            streams[feed.key] = feed.position
        return streams

    def _active_feed(self) -> "_Feed | None":
        if self._feed is not None and not self._by_job:
            self._feed.restart()  # not read meanwhile: new job followers read up to now
            return None
        return self._feed

    async def _wait(self) -> bool:
        """Block until something is new (or a new stream is followed), and take what came.

        Streams read by key are handed out at once; the feed's entries are noted,
        and the followed job streams they announce are read by the next
        `_read_once`. True when that should run at once.
        """
        feed = self._active_feed()
        if feed is not None and feed.added is None:
            return True  # `_read_once` takes the feed's position first
        streams = self._streams(feed)
        streams[self._wake_key] = self._wake_position
        by_key = dict(self._by_key)
        self._waiting, self._wake_sent = True, False
        try:
            reply: Any = await self._client.xread(streams, count=READ_COUNT, block=self._block_ms)
        finally:
            self._waiting = False
        found = False
        for key, entries in reply or ():
            if key == self._wake_key:
                self._wake_position = entries[-1][0]
            elif feed is not None and key == feed.key:
                feed.note(entries)
                self._announce(entries)
                found = True
            else:
                found = self._hand_out(by_key, key, entries) or found
        # After a read that timed out, one counted read checks the feed for entries
        # trimmed before they could be read (they wake no blocked read).
        return found or not reply

    async def _read_once(self) -> bool:
        """In one `MULTI`: read the job streams announced so far, read what is new without
        blocking, and count the feed's entries; hand it all out. True when anything new
        was read (more may be waiting)."""
        feed = self._active_feed()
        announced = [self._by_job[job] for job in self._announced if job in self._by_job]
        self._announced.clear()
        streams = self._streams(feed)
        by_key = dict(self._by_key)
        metrics.SSE_JOB_STREAM_READS.inc(len(announced))
        async with self._client.pipeline(transaction=True) as pipe:
            for watch in announced:
                pipe.xrange(watch.key, f"({watch.position_id}", "+")
            if streams:
                pipe.xread(streams, count=READ_COUNT)
            if feed is not None:
                pipe.xinfo_stream(feed.key)
            replies = await pipe.execute(raise_on_error=False)
        for watch, entries in zip(announced, replies, strict=False):
            if isinstance(entries, Exception):
                raise entries
            if entries:
                _dispatch(watch, entries)
        rest = replies[len(announced) :]
        reply: Any = rest[0] if streams else None
        if isinstance(reply, Exception):
            raise reply
        info: Any = rest[-1] if feed is not None else None
        if isinstance(info, aioredis.ResponseError):
            info = None  # no outbox yet
        elif isinstance(info, Exception):
            raise info
        found = False
        noticed: list[Any] = []
        for key, entries in reply or ():
            if feed is not None and key == feed.key:
                noticed = entries
            else:
                found = self._hand_out(by_key, key, entries) or found
        if feed is not None:
            starting = feed.added is None
            stale = feed.advance(noticed, info, READ_COUNT)
            self._announce(noticed)
            found = found or bool(noticed)
            if stale:
                if not starting:
                    log.warning("event feed entries were trimmed before they were read")
                await self._resync()
        return found

    def _hand_out(self, by_key: dict[str, _Watch], key: str, entries: Any) -> bool:
        watch = by_key.get(key)
        if watch is None or self._by_key.get(key) is not watch:
            return False  # every follower left (and maybe others joined anew) meanwhile
        _dispatch(watch, entries)
        return True

    def _announce(self, entries: list[Any]) -> None:
        """Note the followed jobs these outbox entries announce new entries of."""
        for _entry_id, fields in entries:
            try:
                job_id = json.loads(fields.get("data", "")).get("job_id")
            except (ValueError, AttributeError):
                continue  # not an event: the relay drops it too
            if isinstance(job_id, str) and job_id in self._by_job:
                self._announced.add(job_id)

    async def _read_again(self, watches: Iterable[_Watch]) -> None:
        """Read each stream past the hub's position for it and hand out what is new.

        A read that overlaps another (a refresh and the loop, say) is harmless:
        each starts at the position of its time, and `_dispatch` hands out only
        what lies past the position of its own time.
        """
        watches = list(watches)
        for start in range(0, len(watches), RANGE_PIPELINE):
            chunk = watches[start : start + RANGE_PIPELINE]
            metrics.SSE_JOB_STREAM_READS.inc(len(chunk))
            async with self._client.pipeline(transaction=False) as pipe:
                for watch in chunk:
                    pipe.xrange(watch.key, f"({watch.position_id}", "+")
                replies = await pipe.execute()
            for watch, entries in zip(chunk, replies, strict=True):
                if entries:
                    _dispatch(watch, entries)

    async def _resync(self) -> None:
        if self._by_job:
            metrics.SSE_RESYNCS.inc()
            await self._read_again(list(self._by_job.values()))

    def _wake(self) -> None:
        """Make a new stream read by key part of the next read at once."""
        if not self._waiting:
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


def _dispatch(watch: _Watch, entries: list[tuple[str, dict[str, str]]]) -> None:
    for entry_id, fields in entries:
        entry = StreamEntry(entry_id, fields.get("data", ""))
        if entry.position <= watch.position:
            continue
        watch.position = entry.position
        watch.position_id = entry_id
        for follower in list(watch.followers):
            follower.push(entry)


class ShardedStreamHub:
    """The `StreamSource` port over sharded keys: one `RedisStreamHub` per shard.

    A hub reads its feed, its followed streams and its wake key in one `XREAD`,
    and job streams with the feed's counter in one `MULTI`: on a Redis Cluster
    those must lie in one slot. Every key of a shard carries the shard's hash
    tag (`offload_runtime.keys`), so each shard gets a hub of its own, fed by
    the shard's outbox, and a followed stream goes to the hub of its shard.
    A hub with nothing followed reads nothing.
    """

    def __init__(
        self,
        client: "aioredis.Redis",
        keys: RedisKeys,
        *,
        consumer: str,
        block_ms: int,
        queue_limit: int,
    ) -> None:
        self._keys = keys
        self.hubs = [
            RedisStreamHub(
                client,
                wake_key=keys.notifier_wake(consumer, shard),
                block_ms=block_ms,
                queue_limit=queue_limit,
                feed=keys.outbox(shard),
                name=f"sse-reader shard {shard}",
            )
            for shard in keys.all_shards
        ]

    def _hub(self, key: str) -> RedisStreamHub:
        shard = self._keys.shard_of_key(key)
        if shard is None or shard >= len(self.hubs):
            raise ValueError(f"not a key of one of the {len(self.hubs)} shards: {key!r}")
        return self.hubs[shard]

    def follow(self, key: str, after: str) -> AbstractAsyncContextManager[Follower]:
        return self._hub(key).follow(key, after)

    def follow_job(
        self, job_id: str, key: str, after: str
    ) -> AbstractAsyncContextManager[Follower]:
        return self._hub(key).follow_job(job_id, key, after)

    async def bounds(self, key: str) -> StreamBounds:
        return await self._hub(key).bounds(key)

    @property
    def keys_followed(self) -> int:
        return sum(hub.keys_followed for hub in self.hubs)

    def start(self) -> None:
        for hub in self.hubs:
            hub.start()

    async def stop(self) -> None:
        await asyncio.gather(*(hub.stop() for hub in self.hubs))

    @property
    def running(self) -> bool:
        return all(hub.running for hub in self.hubs)
