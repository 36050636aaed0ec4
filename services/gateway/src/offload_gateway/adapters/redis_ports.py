"""The gateway's Redis-backed ports: job ledger, idempotency keys, rate limit, unstarted index."""

import time
from typing import Any

import redis.asyncio as aioredis

from offload_contracts import JobError, JobRequestBase, JobStatus, TraceContext
from offload_contracts.catalog import BUILTIN_CATALOG, JobCatalog
from offload_gateway.submission import NotDurable
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import NotReplicated, ScriptBatcher
from offload_runtime.store import JobStore

_RELEASE_IF_OWNED_LUA = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RATE_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class StoreLedger:
    """`JobLedger`, `JobLookup` and `WaitingJobs` over the runtime's `JobStore`."""

    def __init__(self, store: JobStore, catalog: JobCatalog = BUILTIN_CATALOG) -> None:
        self._store = store
        self._catalog = catalog

    async def record_waiting(
        self, request: JobRequestBase, webhook: dict[str, Any] | None, idempotency_key: str | None
    ) -> bool:
        try:
            created = await self._store.create(
                request, webhook=webhook, idempotency_key=idempotency_key
            )
        except NotReplicated as exc:
            raise NotDurable(
                f"job state storage did not replicate the job in time ({exc})"
            ) from exc
        return created.applied

    async def record_not_accepted(self, request: JobRequestBase, error: JobError) -> None:
        job_type: str = request.type
        await self._store.fail(request.id, request.tenant, job_type, 0, error, run_id=None)

    async def exists(self, job_id: str) -> bool:
        return await self._store.exists(job_id)

    async def waiting_request(self, job_id: str) -> JobRequestBase | None:
        record = await self._store.get(job_id)
        if record is None or record.status != JobStatus.WAITING:
            return None
        spec = self._catalog.specs.get(record.type)
        if spec is None:
            return None
        return spec.request.model_validate(
            {
                "id": record.id,
                "tenant": record.tenant,
                "type": record.type,
                "attempt": record.attempt + 1,
                "max_attempts": record.max_attempts,
                "created_at": record.created_at,
                "trace": TraceContext(),
                "input": record.input,
            }
        )


class RedisIdempotency:
    """`Idempotency-Key` → `<job id> <body fingerprint>`, claimed with SET NX, kept for a TTL."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys, *, ttl_s: int) -> None:
        self._client = client
        self._keys = keys
        self._ttl_s = ttl_s
        self._release = client.register_script(_RELEASE_IF_OWNED_LUA)

    async def claim(self, tenant: str, key: str, job_id: str, fingerprint: str) -> str | None:
        # SET NX GET (Redis 7): one round trip claims the key or returns who holds it.
        held = await self._client.set(
            self._keys.idempotency(tenant, key),
            f"{job_id} {fingerprint}",
            nx=True,
            ex=self._ttl_s,
            get=True,
        )
        return None if held is None else str(held)

    async def release(self, tenant: str, key: str, job_id: str) -> None:
        await self._release(keys=[self._keys.idempotency(tenant, key)], args=[job_id])


class RedisRateLimiter:
    """A per-tenant fixed one-second window; concurrent calls share one pipeline per tick."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys, *, per_second: int) -> None:
        self._keys = keys
        self._limit = per_second
        self._count = ScriptBatcher(client, _RATE_LUA)

    async def hit(self, tenant: str) -> int | None:
        if self._limit <= 0:
            return None
        window = int(time.time())
        count = await self._count((self._keys.rate(tenant, window),), (2000,))
        return 1 if int(count) > self._limit else None


class RedisUnstartedIndex:
    """The job store's `unstarted` sets (one per shard), and the sweep's lock."""

    def __init__(
        self,
        store: JobStore,
        client: "aioredis.Redis",
        keys: RedisKeys,
        catalog: JobCatalog = BUILTIN_CATALOG,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._client = client
        self._keys = keys
        self._unlock = client.register_script(_UNLOCK_LUA)

    async def try_lock(self, token: str, ttl_s: float) -> bool:
        return bool(
            await self._client.set(self._keys.sweep_lock, token, nx=True, px=int(ttl_s * 1000))
        )

    async def unlock(self, token: str) -> None:
        await self._unlock(keys=[self._keys.sweep_lock], args=[token])

    async def due(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        return await self._store.due_unstarted(before_ms, limit)

    async def postpone(
        self, job_id: str, score: int, published_ms: int, first_wait_ms: int, max_wait_ms: int
    ) -> int | None:
        return await self._store.postpone_unstarted(
            job_id, score, published_ms, first_wait_ms, max_wait_ms
        )

    async def forget(self, job_id: str) -> None:
        await self._store.forget_unstarted(job_id)
