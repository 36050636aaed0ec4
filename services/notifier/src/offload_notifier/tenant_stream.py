"""A tenant's events (`GET /v1/events`): the tenant's stream of every shard, merged.

The relay of each shard appends the tenant's events of that shard's jobs to
the tenant's stream of that shard. A client follows all of them at once and
gets their entries in the order they come. The `id:` of each entry is the
client's position in every shard (`offload_runtime.stream_cursor`), so
`Last-Event-ID` resumes each shard strictly after what the client has seen
of it: no gap, no duplicate, whatever the interleaving was.

Started without `Last-Event-ID`, the stream is live from the moment of
connection (a `: subscribed` comment marks it). A shard that cannot resume
(its stream was trimmed past the client's position, or the position is not
one it gave out) starts live, and a `resync` event says so first.
"""

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack

from offload_notifier.streams import (
    SUBSCRIBED,
    Frame,
    StreamBounds,
    StreamEntry,
    StreamSource,
    Subscription,
)
from offload_runtime import stream_cursor
from offload_runtime.stream_ids import stream_id

START = "0-0"


def _refusal(after: str, bounds: StreamBounds) -> str | None:
    """Why a shard's stream cannot resume after `after`; None when every entry after it is
    still there."""
    wanted = stream_id(after)
    if bounds.last is None:
        # Empty or gone (expired): fine only for a client that had seen nothing of it.
        return None if wanted == (0, 0) else "events since your Last-Event-ID are gone"
    if wanted > stream_id(bounds.last):
        return "your Last-Event-ID is later than this stream's last event, so not one it sent"
    if bounds.trimmed and bounds.first is not None and wanted < stream_id(bounds.first):
        return "events since your Last-Event-ID were trimmed"
    return None


async def tenant_frames(
    keys: list[str],
    resume: dict[int, str] | None,
    *,
    source: StreamSource,
    ping_s: float,
) -> AsyncGenerator[Frame, None]:
    """One client's view of its tenant's events over the shard streams `keys` (by shard).

    `resume`: the position of every shard to resume after; empty when the client sent
    an id that names no shard (a plain stream id, from before the stream was sharded).
    """
    bounds = await asyncio.gather(*(source.bounds(key) for key in keys))
    positions = {shard: found.last or START for shard, found in enumerate(bounds)}
    if resume == {}:
        reason = "your Last-Event-ID names no shard position (it is from before the shards)"
        yield Frame(
            event="resync",
            data=json.dumps({"reason": f"{reason}: re-read your jobs"}),
            id=stream_cursor.encode(positions),
        )
    elif resume is not None:
        refusals = []
        for shard, after in resume.items():
            refusal = _refusal(after, bounds[shard])
            if refusal is None:
                positions[shard] = after
            else:
                refusals.append(refusal)
        if refusals:
            reason = f"{refusals[0]}: re-read your jobs"
            yield Frame(
                event="resync",
                data=json.dumps({"reason": reason}),
                id=stream_cursor.encode(positions),
            )
    yield SUBSCRIBED
    async with AsyncExitStack() as stack:
        subscriptions = [
            await stack.enter_async_context(source.follow(key, positions[shard]))
            for shard, key in enumerate(keys)
        ]
        arrived: asyncio.Queue[tuple[int, StreamEntry | Exception]] = asyncio.Queue()
        pumps = [
            asyncio.create_task(_pump(shard, subscription, arrived, ping_s))
            for shard, subscription in enumerate(subscriptions)
        ]
        try:
            while True:
                try:
                    async with asyncio.timeout(ping_s):
                        shard, entry = await arrived.get()
                except TimeoutError:
                    yield Frame(comment="ping")
                    continue
                if isinstance(entry, Exception):
                    raise entry  # that shard's stream failed: end, the client resumes
                positions[shard] = entry.id
                yield Frame(
                    event=entry.kind or None,
                    data=entry.public_data,
                    id=stream_cursor.encode(positions),
                )
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(
    shard: int,
    subscription: Subscription,
    arrived: "asyncio.Queue[tuple[int, StreamEntry | Exception]]",
    ping_s: float,
) -> None:
    """Moves one shard's entries, in order, into the client's queue (or its failure)."""
    try:
        while True:
            entry = await subscription.next(ping_s)
            if entry is not None:
                arrived.put_nowait((shard, entry))
    except Exception as exc:
        arrived.put_nowait((shard, exc))
