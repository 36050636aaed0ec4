"""SSE sessions, the domain part (DESIGN §2, §6): what one client sees, and in which order.

A job's stream: its history first, then live events, each with its Redis
stream id as the SSE `id:`; `Last-Event-ID` resumes strictly after that id,
with no gap and no duplicate. When the id is older than the stream's first
entry (the capped stream was trimmed since), or not one this stream gave out,
the client first gets a `resync` event with the job's current state and then
the events after it.
The stream ends after the job's terminal event. A tenant's stream is the same
without history (it starts live) and without an end.

Reading Redis is a port (`StreamSource`), shared by every client of a process:
an event is read once per process and handed to each of its followers.
"""

import json
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from pydantic import ValidationError

from offload_contracts import EventKind, JobEvent
from offload_runtime.stream_ids import stream_id

TERMINAL_KINDS = frozenset(kind.value for kind in EventKind if kind.is_terminal)
START = "0-0"
"""The id before every entry of a stream."""


class StreamEntry:
    """One stream entry, shared by every client that receives it.

    Shared so that the work per entry is done once however many clients get
    it: its JSON is parsed at most once (twice when it carries trace context),
    and `wire` keeps its encoded SSE form
    (set by the web layer the first time one client sends it).
    """

    def __init__(self, entry_id: str, data: str) -> None:
        self.id = entry_id
        self.data = data
        self.wire: bytes | None = None

    @cached_property
    def position(self) -> tuple[int, int]:
        return stream_id(self.id)

    @cached_property
    def public_data(self) -> str:
        """The entry as clients receive it: a job's own stream holds the events as the store
        wrote them, with their internal fields (trace context) when tracing is on."""
        if '"traceparent"' not in self.data:
            return self.data
        try:
            return JobEvent.model_validate_json(self.data).public_json()
        except ValidationError:
            return self.data

    @cached_property
    def kind(self) -> str:
        try:
            value = json.loads(self.data).get("event", "")
        except (ValueError, AttributeError):
            return ""
        return value if isinstance(value, str) else ""

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


@dataclass(frozen=True, slots=True)
class Frame:
    """An SSE message that is not a stream entry: `resync`, or a comment (`: ping`)."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    comment: str | None = None


PING = Frame(comment="ping")
SUBSCRIBED = Frame(comment="subscribed")
"""Sent once a tenant stream's starting point is fixed: events from then on will come."""


class StreamSlots:
    """How many streams each tenant holds open in this process, up to `limit` each.

    So that one tenant cannot take every connection, file descriptor and
    fan-out cycle of a notifier from the others. Counted per process: with N
    replicas behind a load balancer a tenant holds at most N × `limit`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, tenant: str) -> bool:
        """One more stream for `tenant`; False when it already holds `limit`."""
        held = self._open.get(tenant, 0)
        if held >= self.limit:
            return False
        self._open[tenant] = held + 1
        return True

    def give_back(self, tenant: str) -> None:
        held = self._open.get(tenant, 0) - 1
        if held > 0:
            self._open[tenant] = held
        else:
            self._open.pop(tenant, None)

    def held(self, tenant: str) -> int:
        return self._open.get(tenant, 0)


class Subscription(Protocol):
    async def next(self, timeout: float) -> StreamEntry | None:
        """The next entry after the last one returned; None when `timeout` passed first."""
        ...


class StreamSource(Protocol):
    def follow(self, key: str, after: str) -> AbstractAsyncContextManager[Subscription]:
        """Every entry of `key` after `after`: the stored ones, then new ones as they come."""
        ...

    def follow_job(
        self, job_id: str, key: str, after: str
    ) -> AbstractAsyncContextManager[Subscription]:
        """As `follow`, for job `job_id`'s own stream `key` (which the source may learn of
        from the feed of every job's events rather than by reading `key`)."""
        ...

    async def bounds(self, key: str) -> "StreamBounds":
        """Where the stream starts and ends now, and whether entries were ever trimmed."""
        ...


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """The ids of a stream's first and last entries (None when it is empty or absent)."""

    first: str | None
    last: str | None
    trimmed: bool = False


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job's current state and the id of its stream's last entry, read together."""

    view: dict[str, Any]
    terminal: bool
    last_id: str


class JobSnapshots(Protocol):
    async def snapshot(self, job_id: str) -> JobSnapshot | None: ...


def _not_resumable(last_event_id: str, bounds: StreamBounds) -> str | None:
    """Why the stream cannot resume after `last_event_id`; None when every entry after it
    is still there."""
    if bounds.first is None or bounds.last is None:
        return "this stream holds no events to resume from"
    wanted = stream_id(last_event_id)
    if wanted > stream_id(bounds.last):
        return "your Last-Event-ID is later than this stream's last event, so not one it sent"
    # Older than the first entry of a trimmed stream: what came between may be gone.
    if bounds.trimmed and wanted < stream_id(bounds.first):
        return "events since your Last-Event-ID were trimmed"
    return None


async def job_frames(
    job_id: str,
    key: str,
    last_event_id: str | None,
    *,
    source: StreamSource,
    snapshots: JobSnapshots,
    ping_s: float,
) -> AsyncGenerator[Frame | StreamEntry, None]:
    """One client's view of one job's events, until its terminal event."""
    after = START
    if last_event_id is not None:
        bounds = await source.bounds(key)
        if _not_resumable(last_event_id, bounds) is None:
            after = last_event_id
            if last_event_id == bounds.last:
                # Caught up: if that was the job's end, there is nothing more to wait for.
                snapshot = await snapshots.snapshot(job_id)
                if snapshot is None or (snapshot.terminal and snapshot.last_id == after):
                    return
        else:
            snapshot = await snapshots.snapshot(job_id)
            if snapshot is None:
                return
            yield Frame(event="resync", data=json.dumps(snapshot.view), id=snapshot.last_id)
            if snapshot.terminal:
                return
            after = snapshot.last_id
    async with source.follow_job(job_id, key, after) as subscription:
        pending: StreamEntry | None = None
        while True:
            entry = pending or await subscription.next(ping_s)
            pending = None
            if entry is None:
                yield PING
                continue
            yield entry
            if entry.terminal:
                # The end, unless more follows at once (a replayed job starts over).
                pending = await subscription.next(0)
                if pending is None:
                    return


async def tenant_frames(
    key: str,
    last_event_id: str | None,
    *,
    source: StreamSource,
    ping_s: float,
) -> AsyncGenerator[Frame | StreamEntry, None]:
    """One client's view of all its tenant's job events: live, or resumed, never ending."""
    bounds = await source.bounds(key)
    after = bounds.last or START
    if last_event_id is not None:
        refusal = _not_resumable(last_event_id, bounds)
        if refusal is None:
            after = last_event_id
        else:
            reason = f"{refusal}: re-read your jobs"
            yield Frame(event="resync", data=json.dumps({"reason": reason}), id=after)
    yield SUBSCRIBED
    async with source.follow(key, after) as subscription:
        while True:
            entry = await subscription.next(ping_s)
            yield PING if entry is None else entry
