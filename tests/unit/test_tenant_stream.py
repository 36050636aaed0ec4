"""A tenant's events merged from its shard streams: ids that resume with no gap and no
duplicate, and a resync for a shard that cannot resume."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from offload_notifier.streams import StreamBounds, StreamEntry
from offload_notifier.tenant_stream import tenant_frames
from offload_runtime import stream_cursor
from offload_runtime.stream_ids import stream_id


class Stored:
    """Entries after a position, as they are stored now; then nothing (None: a ping)."""

    def __init__(self, entries: list[StreamEntry]) -> None:
        self._entries = list(entries)

    async def next(self, timeout: float) -> StreamEntry | None:
        if self._entries:
            return self._entries.pop(0)
        await asyncio.sleep(timeout)
        return None


class ShardStreams:
    def __init__(self, streams: dict[str, list[str]], trimmed: frozenset[str] = frozenset()):
        self.streams = {
            key: [
                StreamEntry(entry_id, json.dumps({"event": "progress", "at": f"{key}/{entry_id}"}))
                for entry_id in ids
            ]
            for key, ids in streams.items()
        }
        self.trimmed = trimmed

    @asynccontextmanager
    async def follow(self, key: str, after: str) -> AsyncIterator[Stored]:
        yield Stored([e for e in self.streams[key] if stream_id(e.id) > stream_id(after)])

    async def bounds(self, key: str) -> StreamBounds:
        entries = self.streams[key]
        if not entries:
            return StreamBounds(None, None)
        return StreamBounds(entries[0].id, entries[-1].id, key in self.trimmed)


async def _read(streams: ShardStreams, resume: str | None, count: int) -> list:
    """The frames up to the `count`-th event (resyncs and comments included)."""
    cursor = None if resume is None else stream_cursor.decode(resume, len(streams.streams))
    frames = tenant_frames(list(streams.streams), cursor, source=streams, ping_s=0.05)
    found = []
    events = 0
    async for frame in frames:
        found.append(frame)
        if frame.comment is None and frame.event != "resync":
            events += 1
        if events == count or frame.comment == "ping":
            break
    await frames.aclose()
    return found


def _events(frames: list) -> list[str]:
    return [json.loads(f.data)["at"] for f in frames if f.comment is None and f.event != "resync"]


async def test_each_event_id_resumes_every_shard_after_what_was_seen() -> None:
    streams = ShardStreams({"s0": ["1-0", "4-0", "6-0"], "s1": ["2-0", "3-0"], "s2": []})
    everything = await _read(streams, "0", 5)
    assert sorted(_events(everything)) == ["s0/1-0", "s0/4-0", "s0/6-0", "s1/2-0", "s1/3-0"]
    # Cut after any event, resuming from its id gives exactly the rest, once each.
    events = [f for f in everything if f.comment is None]
    for cut, frame in enumerate(events[:-1]):
        rest = await _read(streams, frame.id, len(events) - cut - 1)
        assert sorted(_events(rest)) == sorted(_events(events[cut + 1 :]))
    # After the last one, nothing but pings.
    assert [f.comment for f in await _read(streams, events[-1].id, 1)] == ["subscribed", "ping"]


async def test_a_live_stream_starts_after_every_shards_last_entry() -> None:
    streams = ShardStreams({"s0": ["1-0"], "s1": ["2-0"]})
    frames = await _read(streams, None, 1)
    assert [f.comment for f in frames] == ["subscribed", "ping"]


async def test_a_shard_trimmed_past_the_position_resyncs_and_starts_live() -> None:
    streams = ShardStreams({"s0": ["5-0", "6-0"], "s1": ["2-0", "3-0"]}, trimmed=frozenset({"s0"}))
    frames = await _read(streams, "0.1-0_1.2-0", 1)
    resync = frames[0]
    assert resync.event == "resync"
    assert json.loads(resync.data) == {
        "reason": "events since your Last-Event-ID were trimmed: re-read your jobs"
    }
    assert stream_cursor.decode(resync.id, 2) == {0: "6-0", 1: "2-0"}
    # The shard that could resume does, from its own position.
    assert _events(frames) == ["s1/3-0"]
    assert stream_cursor.decode(frames[-1].id, 2) == {0: "6-0", 1: "3-0"}


async def test_an_id_from_before_the_shards_resyncs_and_goes_live() -> None:
    streams = ShardStreams({"s0": ["5-0"], "s1": []})
    frames = tenant_frames(list(streams.streams), {}, source=streams, ping_s=0.05)
    resync = await anext(frames)
    subscribed = await anext(frames)
    await frames.aclose()
    assert resync.event == "resync" and resync.data is not None
    assert "from before the shards" in json.loads(resync.data)["reason"]
    assert stream_cursor.decode(resync.id, 2) == {0: "5-0", 1: "0-0"}
    assert subscribed.comment == "subscribed"
