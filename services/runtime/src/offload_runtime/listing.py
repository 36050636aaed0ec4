"""A tenant's jobs, newest first, merged from the tenant's per-shard indexes.

Each shard keeps the tenant's job ids in a sorted set scored by creation
time (ms). A listing reads the shards side by side and merges them in one
order, newest first: by score, then by id (both descending), which is also
the order Redis gives members of equal score in `ZREVRANGE`. That order is
total, so a cursor is simply the last listed job's `<score>:<id>`: the next
page resumes right after it in every shard, even if that job has expired
since, and the cursor does not depend on the shard count.
"""

import asyncio
import heapq
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import redis.asyncio as aioredis

from offload_runtime.keys import RedisKeys
from offload_runtime.store import JobRecord

LISTED_FIELDS = (
    "id",
    "tenant",
    "type",
    "status",
    "attempt",
    "max_attempts",
    "progress",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "next_attempt_at",
)
"""The job fields a listing needs: not the input, which may be large."""


class InvalidCursor(ValueError):
    """A listing cursor that this API did not hand out."""


@dataclass(frozen=True, slots=True)
class JobPageResult:
    """One page of a tenant's jobs, newest first, and where the next page starts."""

    jobs: list[JobRecord]
    next_cursor: str | None


def parse_cursor(cursor: str) -> tuple[int, str]:
    score_text, sep, job_id = cursor.partition(":")
    try:
        score = int(score_text)
    except ValueError:
        score = -1
    if not sep or score < 0 or not job_id:
        raise InvalidCursor("cursor is not one this API handed out")
    return score, job_id


def make_cursor(score: float, job_id: str) -> str:
    return f"{int(score)}:{job_id}"


class _Entry:
    """A member of one shard's index, ordered newest first for `heapq` (a min-heap)."""

    __slots__ = ("job_id", "score", "shard")

    def __init__(self, score: float, job_id: str, shard: int) -> None:
        self.score = int(score)
        self.job_id = job_id
        self.shard = shard

    def __lt__(self, other: "_Entry") -> bool:
        return (self.score, self.job_id) > (other.score, other.job_id)


class JobListing:
    """Lists a tenant's jobs over every shard (`GET /v1/jobs`, the admin's recent jobs)."""

    def __init__(self, client: "aioredis.Redis", keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    async def list_jobs(
        self,
        tenant: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        status: str | None = None,
        job_type: str | None = None,
        scan_limit: int = 1000,
    ) -> JobPageResult:
        """The tenant's jobs, newest first.

        `cursor` is the `next_cursor` of the previous page. Jobs whose hash has
        expired are skipped and dropped from their index. With filters, at
        most `scan_limit` ids are examined per call, so a page may hold fewer
        than `limit` jobs and still carry a cursor.
        """
        after = None if cursor is None else parse_cursor(cursor)
        chunk = max(limit, 50)
        shards = [
            self._shard_entries(tenant, shard, after, chunk) for shard in self._keys.all_shards
        ]
        merged = _Merged(shards)
        jobs: list[JobRecord] = []
        scanned = 0
        last: _Entry | None = None
        try:
            while scanned < scan_limit:
                batch = await merged.take(chunk)
                if not batch:
                    return JobPageResult(jobs, None)
                async with self._client.pipeline(transaction=False) as pipe:
                    for entry in batch:
                        pipe.hmget(self._keys.job(entry.job_id), LISTED_FIELDS)
                    rows: list[list[str | None]] = await pipe.execute()
                expired: list[_Entry] = []
                for position, (entry, row) in enumerate(zip(batch, rows, strict=True)):
                    scanned += 1
                    last = entry
                    if row[0] is None:
                        expired.append(entry)
                        continue
                    data = {k: v for k, v in zip(LISTED_FIELDS, row, strict=True) if v is not None}
                    record = JobRecord.from_hash(data)
                    if (status is None or record.status == status) and (
                        job_type is None or record.type == job_type
                    ):
                        jobs.append(record)
                    if len(jobs) >= limit:
                        await self._forget(tenant, expired)
                        more = position < len(batch) - 1 or await merged.more()
                        return JobPageResult(
                            jobs, make_cursor(entry.score, entry.job_id) if more else None
                        )
                await self._forget(tenant, expired)
            return JobPageResult(jobs, make_cursor(last.score, last.job_id) if last else None)
        finally:
            await merged.aclose()

    async def _shard_entries(
        self, tenant: str, shard: int, after: tuple[int, str] | None, chunk: int
    ) -> AsyncGenerator[_Entry, None]:
        """One shard's index, newest first, strictly after `after`, read `chunk` at a time."""
        index = self._keys.tenant_jobs(tenant, shard)
        top: str | int = "+inf" if after is None else after[0]
        offset = 0
        while True:
            found: list[tuple[str, float]] = await self._client.zrevrangebyscore(  # type: ignore[assignment]
                index, top, "-inf", start=offset, num=chunk, withscores=True
            )
            for job_id, score in found:
                # Equal scores come newest-first by id: those at or above the cursor's id
                # were on earlier pages.
                if after is not None and int(score) == after[0] and job_id >= after[1]:
                    continue
                yield _Entry(score, job_id, shard)
            if len(found) < chunk:
                return
            offset += len(found)

    async def _forget(self, tenant: str, expired: list[_Entry]) -> None:
        if not expired:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for entry in expired:
                pipe.zrem(self._keys.tenant_jobs(tenant, entry.shard), entry.job_id)
            await pipe.execute()


class _Merged:
    """Shard iterators merged newest first; the shards' first reads run concurrently."""

    def __init__(self, shards: list[AsyncGenerator[_Entry, None]]) -> None:
        self._shards = shards
        self._heap: list[tuple[_Entry, int]] = []
        self._started = False

    async def _advance(self, position: int) -> None:
        entry = await anext(self._shards[position], None)
        if entry is not None:
            heapq.heappush(self._heap, (entry, position))

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await asyncio.gather(*(self._advance(i) for i in range(len(self._shards))))

    async def take(self, count: int) -> list[_Entry]:
        await self._start()
        taken: list[_Entry] = []
        while len(taken) < count and self._heap:
            entry, position = heapq.heappop(self._heap)
            taken.append(entry)
            await self._advance(position)
        return taken

    async def more(self) -> bool:
        await self._start()
        return bool(self._heap)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
