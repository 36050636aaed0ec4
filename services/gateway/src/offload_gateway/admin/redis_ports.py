"""The admin API's Redis-backed ports: jobs of every tenant, the outbox, the audit, limits."""

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from offload_contracts import JobEvent
from offload_contracts.admin import AuditEntry, TimelineEntry
from offload_runtime.inflight import read_unacked
from offload_runtime.keys import RedisKeys
from offload_runtime.listing import JobListing
from offload_runtime.redis import xread_streams
from offload_runtime.store import JobRecord, JobStore, TransitionResult, utcnow


class StoreJobs:
    """`JobsView` over the runtime's `JobStore` and its listing, merged across tenants."""

    def __init__(self, store: JobStore, listing: JobListing) -> None:
        self._store = store
        self._listing = listing

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._store.get(job_id)

    async def replay(self, job: JobRecord) -> TransitionResult:
        return await self._store.replay(job)

    async def recent(self, tenants: Sequence[str], limit: int) -> list[JobRecord]:
        pages = await asyncio.gather(
            *(self._listing.list_jobs(tenant, limit=limit) for tenant in tenants)
        )
        # In each tenant's listing order (creation ms, then id, newest first).
        return sorted(
            (job for page in pages for job in page.jobs),
            key=lambda job: (int(job.created_at.timestamp() * 1000), job.id),
            reverse=True,
        )[:limit]

    async def timeline(self, job_id: str) -> list[TimelineEntry]:
        return [
            TimelineEntry(stream_id=entry_id, event=JobEvent.model_validate_json(data))
            for entry_id, data in await self._store.events(job_id)
        ]


class RedisOutbox:
    """`EventOutbox`: `XREAD` on every shard's outbox, outside the notifier's consumer group."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys) -> None:
        self._client = client
        self._outboxes = {keys.outbox(shard): shard for shard in keys.all_shards}

    async def newest(self) -> dict[int, str]:
        newest: list[Any] = await asyncio.gather(
            *(self._client.xrevrange(key, count=1) for key in self._outboxes)
        )
        return {
            shard: str(last[0][0]) if last else "0-0"
            for shard, last in zip(self._outboxes.values(), newest, strict=True)
        }

    async def read_after(self, positions: dict[int, str]) -> list[tuple[int, str, str]]:
        # Short blocks: a closed stream is noticed within a second, so shutdown never
        # waits on a reader parked in Redis.
        batches = await xread_streams(
            self._client,
            {key: positions[shard] for key, shard in self._outboxes.items()},
            count=200,
            block_ms=1000,
        )
        return [
            (self._outboxes[key], entry_id, fields["data"])
            for key, entries in batches
            for entry_id, fields in entries
        ]


class RedisInFlight:
    """`InFlightReports`: what the consumers write into `inflight:<queue>`."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    async def unacked(self, queues: Sequence[str]) -> dict[str, int | None]:
        return await read_unacked(self._client, self._keys, queues)


class RedisActionLimiter:
    """At most `per_minute` replay or purge calls per admin key, in one-minute windows."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys, *, per_minute: int) -> None:
        self._client = client
        self._keys = keys
        self._per_minute = per_minute

    async def hit(self, actor: str) -> int | None:
        window = int(time.time() // 60)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incr(self._keys.admin_rate(actor, window))
            pipe.expire(self._keys.admin_rate(actor, window), 120)
            count, _ = await pipe.execute()
        if int(count) > self._per_minute:
            return max(1, 60 - int(time.time() % 60))
        return None


class RedisAuditLog:
    """The `admin:audit` stream, capped at `maxlen` entries."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys, *, maxlen: int) -> None:
        self._client = client
        self._stream = keys.admin_audit
        self._maxlen = maxlen

    async def record(self, actor: str, action: str, queue: str, detail: dict[str, Any]) -> str:
        entry_id = await self._client.xadd(
            self._stream,
            {
                "at": utcnow().isoformat(),
                "actor": actor,
                "action": action,
                "queue": queue,
                "detail": json.dumps(detail),
            },
            maxlen=self._maxlen,
            approximate=True,
        )
        return str(entry_id)

    async def newest(self, limit: int) -> list[AuditEntry]:
        entries: Any = await self._client.xrevrange(self._stream, count=limit)
        return [
            AuditEntry(
                id=entry_id,
                at=fields.get("at", ""),
                actor=fields.get("actor", ""),
                action=fields.get("action", ""),
                queue=fields.get("queue", ""),
                detail=json.loads(fields.get("detail") or "{}"),
            )
            for entry_id, fields in entries
        ]
