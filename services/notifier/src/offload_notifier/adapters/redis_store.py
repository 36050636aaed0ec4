"""The notifier's Redis writes and reads besides streams: tenant streams, job snapshots,
webhook delivery records."""

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from offload_notifier.relay import RelayedEvent
from offload_notifier.streams import START, JobSnapshot
from offload_runtime.keys import RedisKeys
from offload_runtime.store import JobRecord, utcnow

# What a job's tenant may see of it (the same fields as `GET /v1/jobs/{id}`).
_HIDDEN = {"tenant", "input", "webhook", "idempotency_key"}


class RedisTenantStreams:
    """Appends relayed events to their tenant's stream of their job's shard (capped), one
    pipeline per batch."""

    def __init__(
        self, client: "aioredis.Redis", keys: RedisKeys, *, maxlen: int, retention_s: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._maxlen = maxlen
        self._retention_s = retention_s

    async def append(self, events: Sequence[RelayedEvent]) -> None:
        keys = [
            self._keys.tenant_events(relayed.event.tenant, self._keys.shard(relayed.event.job_id))
            for relayed in events
        ]
        async with self._client.pipeline(transaction=False) as pipe:
            for key in set(keys):
                pipe.expire(key, self._retention_s)
            for key, relayed in zip(keys, events, strict=True):
                pipe.xadd(
                    key,
                    {"data": relayed.json},
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()


class RedisJobs:
    """Jobs as the notifier reads them: tenant checks, and snapshots for `resync`."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    async def tenant_of(self, job_id: str) -> str | None:
        tenant = await self._client.hget(self._keys.job(job_id), "tenant")
        return None if tenant is None else str(tenant)

    async def snapshot(self, job_id: str) -> JobSnapshot | None:
        # One transaction: the state and the stream's last id agree, since every
        # transition writes both in one Lua call.
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.job(job_id))
            pipe.xrevrange(self._keys.job_events(job_id), "+", "-", count=1)
            data, last = await pipe.execute()
        if not data:
            return None
        record = JobRecord.from_hash(data)
        view = record.model_dump(mode="json", exclude=_HIDDEN)
        return JobSnapshot(
            view=view,
            terminal=record.status.is_terminal,
            last_id=last[0][0] if last else START,
        )


class RedisDeliveryLog:
    """What became of each webhook delivery: `job:{id}:webhooks`, event id → outcome JSON."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys, *, retention_s: int) -> None:
        self._client = client
        self._keys = keys
        self._retention_s = retention_s

    async def record(self, job_id: str, event_id: str, **outcome: Any) -> None:
        key = self._keys.webhook_deliveries(job_id)
        entry = json.dumps({**outcome, "at": utcnow().isoformat()})
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(key, event_id, entry)
            pipe.expire(key, self._retention_s)
            await pipe.execute()

    async def outcomes(self, job_id: str) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = await self._client.hgetall(self._keys.webhook_deliveries(job_id))  # type: ignore[assignment]
        return {event_id: json.loads(value) for event_id, value in raw.items()}
