"""The Redis job store: one atomic Lua compare-and-set per transition (DESIGN §4).

Each transition checks the job's current status (and attempt, and the id of
the run that owns it), writes the new fields, and appends the transition's
event to the job's stream and to the event outbox, all in one script. So a
redelivered or duplicated message can never run a finished job again nor move
a job backwards, and state and events never disagree.
"""

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from offload_contracts import EventKind, JobError, JobEvent, JobRequestBase, JobStatus, Progress
from offload_runtime import outage
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import get_logger
from offload_runtime.redis import ScriptBatcher
from offload_runtime.telemetry import current_traceparent

TRANSITION_LUA = r"""
-- KEYS: 1 job hash, 2 job events, 3 outbox, 4 unstarted zset, 5 tenant jobs zset, 6 checkpoints
-- ARGV: 1 allowed 'status:attempt' pairs joined by '|' ('*' = any attempt, 'none' = absent)
--       2 run id the job must hold ('' = no check)   3 event JSON ('' = none)
--       4 job events cap   5 expire seconds (0 keep, -1 persist)
--       6 unstarted set: 'add' | 'rem' | ''   7 score (ms) for 'add' and for a new job
--       8 channel to publish the job id on ('' = none)   9 job id
--       10.. field, value pairs to set ('' means unset)
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'run')
local status = cur[1] or 'none'
local attempt = cur[2] or '0'
local ok = false
for pair in string.gmatch(ARGV[1], '[^|]+') do
  local s, a = string.match(pair, '^([^:]+):(.+)$')
  if s == status and (a == '*' or a == attempt) then ok = true; break end
end
if ok and ARGV[2] ~= '' and cur[3] ~= ARGV[2] then ok = false end
if not ok then return {0, status, attempt, cur[3] or ''} end
if #ARGV >= 11 then
  local fields = {}
  for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
end
if status == 'none' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[9]) end
if ARGV[6] == 'add' then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[9])
elseif ARGV[6] == 'rem' then redis.call('ZREM', KEYS[4], ARGV[9]) end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'data', ARGV[3])
  local webhook = redis.call('HGET', KEYS[1], 'webhook')
  if webhook and webhook ~= '' then
    redis.call('XADD', KEYS[3], '*', 'data', ARGV[3], 'webhook', webhook)
  else
    redis.call('XADD', KEYS[3], '*', 'data', ARGV[3])
  end
end
if ARGV[5] == '-1' then
  redis.call('PERSIST', KEYS[1]); redis.call('PERSIST', KEYS[2]); redis.call('PERSIST', KEYS[6])
elseif ARGV[5] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[5]); redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('EXPIRE', KEYS[6], ARGV[5])
end
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {1, status, attempt, cur[3] or ''}
"""

POSTPONE_UNSTARTED_LUA = r"""
-- KEYS: 1 unstarted zset, 2 job hash
-- ARGV: 1 job id   2 the job's score as the sweep read it   3 republished at (ms)
--       4 first wait (ms)   5 longest wait (ms)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return false end
if redis.call('HGET', KEYS[2], 'status') ~= 'waiting' then return false end
local n = (tonumber(redis.call('HGET', KEYS[2], 'republished')) or 0) + 1
redis.call('HSET', KEYS[2], 'republished', n)
local first = tonumber(ARGV[4])
local wait = math.min(first * 2 ^ n, tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', tonumber(ARGV[3]) + wait - first), ARGV[1])
return wait
"""

log = get_logger("offload.store")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def new_id() -> str:
    """A job or event id: 32 hex chars, unguessable (128 random bits).

    `secrets.token_hex` rather than `uuid4().hex`: the same randomness without
    building a UUID object, about 1.4 µs less per id on the hot paths.
    """
    return secrets.token_hex(16)


class JobRecord(BaseModel):
    """A job as held in Redis: what `GET /v1/jobs/{id}` shows, plus tenant and input."""

    id: str
    tenant: str
    type: str
    status: JobStatus
    attempt: int = 0
    max_attempts: int
    input: dict[str, Any] = Field(default_factory=dict)
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    webhook: dict[str, Any] | None = None
    idempotency_key: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> "JobRecord":
        values: dict[str, Any] = {k: v for k, v in data.items() if v != "" and k != "run"}
        for name in ("input", "progress", "result", "error", "webhook"):
            if name in values:
                values[name] = json.loads(values[name])
        return cls.model_validate(values)


_LISTED_FIELDS = (
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
    """A listing cursor that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class JobPageResult:
    """One page of a tenant's jobs, newest first, and where the next page starts."""

    jobs: list[JobRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """Whether a transition happened, and the status and attempt it found."""

    applied: bool
    previous_status: str
    previous_attempt: int


class JobStore:
    """Job state and events in Redis. Every transition is one `TRANSITION_LUA` call."""

    def __init__(
        self,
        client: "aioredis.Redis",
        keys: RedisKeys,
        *,
        retention_s: int,
        events_maxlen: int = 1000,
        outage_wait_s: float = 0,
    ) -> None:
        """`outage_wait_s`: how long a transition waits for Redis to come back
        (`offload_runtime.outage`).

        Workers wait (a message stays unacked meanwhile, nothing is lost); the
        gateway does not (its client gets a 503 at once).
        """
        self.client = client
        self.keys = keys
        self._retention_s = retention_s
        self._events_maxlen = events_maxlen
        self._outage_wait_s = outage_wait_s
        self._transition = ScriptBatcher(client, TRANSITION_LUA)
        self._postpone_unstarted = client.register_script(POSTPONE_UNSTARTED_LUA)

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> JobRecord | None:
        data: dict[str, str] = await self.client.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
        return JobRecord.from_hash(data) if data else None

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
        """The tenant's jobs, newest first, from the `tenant_jobs` sorted set.

        `cursor` is the `next_cursor` of the previous page (`<score>:<id>`): the
        page resumes right after that job even if it has expired since. Jobs
        whose hash has expired are skipped and dropped from the index. With
        filters, at most `scan_limit` ids are examined per call, so a page may
        hold fewer than `limit` jobs and still carry a cursor.
        """
        index = self.keys.tenant_jobs(tenant)
        start = 0 if cursor is None else await self._offset_after(index, cursor)
        jobs: list[JobRecord] = []
        scanned = 0
        chunk = max(limit, 50)
        last: tuple[float, str] | None = None
        while scanned < scan_limit:
            entries: list[tuple[str, float]] = await self.client.zrevrange(  # type: ignore[assignment]
                index, start, start + chunk - 1, withscores=True
            )
            if not entries:
                return JobPageResult(jobs, None)
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id, _ in entries:
                    pipe.hmget(self.keys.job(job_id), _LISTED_FIELDS)
                rows: list[list[str | None]] = await pipe.execute()
            expired = []
            for position, ((job_id, score), row) in enumerate(zip(entries, rows, strict=True)):
                scanned += 1
                last = (score, job_id)
                if row[0] is None:
                    expired.append(job_id)
                    continue
                data = {k: v for k, v in zip(_LISTED_FIELDS, row, strict=True) if v is not None}
                record = JobRecord.from_hash(data)
                if (status is None or record.status == status) and (
                    job_type is None or record.type == job_type
                ):
                    jobs.append(record)
                if len(jobs) >= limit:
                    if expired:
                        await self.client.zrem(index, *expired)
                    more = position < len(entries) - 1 or len(entries) == chunk
                    return JobPageResult(jobs, _cursor(score, job_id) if more else None)
            if expired:
                await self.client.zrem(index, *expired)
                start -= len(expired)  # the removed ids no longer take a rank
            if len(entries) < chunk:
                return JobPageResult(jobs, None)
            start += len(entries)
        return JobPageResult(jobs, _cursor(*last) if last else None)

    async def _offset_after(self, index: str, cursor: str) -> int:
        """How many members sort before the cursor's job in newest-first order, plus it."""
        score_text, sep, job_id = cursor.partition(":")
        try:
            score = int(score_text)
        except ValueError:
            score = -1
        if not sep or score < 0 or not job_id:
            raise InvalidCursor("cursor is not one this API handed out")
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcount(index, f"({score}", "+inf")
            pipe.zrangebyscore(index, score, score)
            newer, tied = await pipe.execute()
        # Members with an equal score come in reverse lexicographic order, so the
        # ones at or above the cursor's id were on earlier pages.
        return int(newer) + sum(1 for member in tied if member >= job_id)

    # ------------------------------------------------------------------ transitions

    async def create(
        self,
        request: JobRequestBase,
        *,
        webhook: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> TransitionResult:
        """Record a new job `waiting` (event `queued`). Refused if the id exists.

        Callers give every new job a fresh random id, so a `waiting` job found
        under it can only be this call's own, re-sent after its reply was lost
        (redis-py retries on connection errors): that counts as created.
        """
        input_json = request.input.model_dump_json()
        job_type: str = request.type
        fields = {
            "id": request.id,
            "tenant": request.tenant,
            "type": job_type,
            "status": JobStatus.WAITING.value,
            "attempt": "0",
            "max_attempts": str(request.max_attempts),
            "input": input_json,
            "created_at": _iso(request.created_at),
            "webhook": json.dumps(webhook) if webhook else "",
            "idempotency_key": idempotency_key or "",
        }
        created = await self._apply(
            request.id,
            request.tenant,
            allowed="none:*",
            event=self._event(request.id, request.tenant, job_type, EventKind.QUEUED, 0),
            unstarted="add",
            score=int(request.created_at.timestamp() * 1000),
            fields=fields,
        )
        if not created.applied and created.previous_status == JobStatus.WAITING:
            return TransitionResult(True, "none", 0)
        return created

    async def start(
        self, request: JobRequestBase, run_id: str, *, redelivered: bool
    ) -> TransitionResult:
        """`waiting|delayed → active` for attempt n, owned by `run_id`.

        A redelivered message may also take over a job left `active` (its
        worker died mid-run) or `delayed` (its worker died after recording the
        retry but before acking), for the same attempt.
        """
        n = request.attempt
        allowed = f"waiting:{n - 1}|delayed:{n - 1}"
        if redelivered:
            allowed += f"|active:{n}|delayed:{n}"
        return await self._apply(
            request.id,
            request.tenant,
            allowed=allowed,
            event=self._event(request.id, request.tenant, _type(request), EventKind.STARTED, n),
            unstarted="rem",
            fields={
                "status": JobStatus.ACTIVE.value,
                "attempt": str(n),
                "run": run_id,
                "started_at": _iso(utcnow()),
                "next_attempt_at": "",
            },
        )

    async def progress(
        self, request: JobRequestBase, run_id: str, percent: float, message: str
    ) -> TransitionResult:
        progress = Progress(percent=max(0.0, min(100.0, percent)), message=message[:500])
        return await self._apply(
            request.id,
            request.tenant,
            allowed=f"active:{request.attempt}",
            run=run_id,
            event=self._event(
                request.id,
                request.tenant,
                _type(request),
                EventKind.PROGRESS,
                request.attempt,
                progress=progress,
            ),
            fields={"progress": progress.model_dump_json()},
        )

    async def complete(
        self, request: JobRequestBase, run_id: str, result: dict[str, Any]
    ) -> TransitionResult:
        return await self._apply(
            request.id,
            request.tenant,
            allowed=f"active:{request.attempt}",
            run=run_id,
            event=self._event(
                request.id,
                request.tenant,
                _type(request),
                EventKind.COMPLETED,
                request.attempt,
                result=result,
            ),
            expire=self._retention_s,
            fields={
                "status": JobStatus.COMPLETED.value,
                "result": json.dumps(result),
                "progress": Progress(percent=100, message="completed").model_dump_json(),
                "finished_at": _iso(utcnow()),
            },
        )

    async def retry(
        self,
        request: JobRequestBase,
        run_id: str,
        error: JobError,
        next_attempt_at: datetime,
    ) -> TransitionResult:
        """`active → delayed`: the next attempt comes from a retry tier."""
        return await self._apply(
            request.id,
            request.tenant,
            allowed=f"active:{request.attempt}",
            run=run_id,
            event=self._event(
                request.id,
                request.tenant,
                _type(request),
                EventKind.RETRYING,
                request.attempt,
                error=error,
                next_attempt_at=next_attempt_at,
            ),
            fields={
                "status": JobStatus.DELAYED.value,
                "error": error.model_dump_json(),
                "next_attempt_at": _iso(next_attempt_at),
            },
        )

    async def fail(
        self,
        job_id: str,
        tenant: str,
        job_type: str,
        attempt: int,
        error: JobError,
        *,
        run_id: str | None,
    ) -> TransitionResult:
        """`→ failed`: with a run id, from that run's `active`; without, from any live state."""
        allowed = f"active:{attempt}" if run_id else "waiting:*|delayed:*|active:*"
        return await self._apply(
            job_id,
            tenant,
            allowed=allowed,
            run=run_id or "",
            event=self._event(job_id, tenant, job_type, EventKind.FAILED, attempt, error=error),
            expire=self._retention_s,
            unstarted="rem",
            fields={
                "status": JobStatus.FAILED.value,
                "error": error.model_dump_json(),
                "finished_at": _iso(utcnow()),
                "next_attempt_at": "",
            },
        )

    async def cancel(self, job: JobRecord) -> TransitionResult:
        """`waiting|delayed|active → cancelled`; an active job's worker is told to stop."""
        return await self._apply(
            job.id,
            job.tenant,
            allowed="waiting:*|delayed:*|active:*",
            event=self._event(job.id, job.tenant, job.type, EventKind.CANCELLED, job.attempt),
            expire=self._retention_s,
            unstarted="rem",
            publish=self.keys.cancel_channel,
            fields={
                "status": JobStatus.CANCELLED.value,
                "finished_at": _iso(utcnow()),
                "next_attempt_at": "",
                "run": "",
            },
        )

    async def replay(self, job: JobRecord) -> TransitionResult:
        """`failed → waiting` with attempts reset (a dead letter replayed by an operator)."""
        return await self._apply(
            job.id,
            job.tenant,
            allowed="failed:*",
            event=self._event(job.id, job.tenant, job.type, EventKind.QUEUED, 0),
            expire=-1,
            unstarted="add",
            score=int(utcnow().timestamp() * 1000),
            fields={
                "status": JobStatus.WAITING.value,
                "attempt": "0",
                "error": "",
                "result": "",
                "progress": "",
                "started_at": "",
                "finished_at": "",
                "republished": "",  # the sweep's backoff starts over
            },
        )

    async def postpone_unstarted(
        self, job_id: str, score: int, published_ms: int, first_wait_ms: int, max_wait_ms: int
    ) -> int | None:
        """Count one more republication of a `waiting` job and move its sweep deadline on.

        A job in `unstarted` is due for republishing once its score is
        `first_wait_ms` old: at first its score is its acceptance time; after
        its n-th republication (counted in the job's `republished` field) it
        is due `first_wait_ms` × 2ⁿ after `published_ms`, at most `max_wait_ms`.
        Returns that wait. None, and nothing counted, when the job no longer
        holds `score` in the set (it started, or another sweeper moved it on).
        """
        wait = await self._postpone_unstarted(
            keys=[self.keys.unstarted, self.keys.job(job_id)],
            args=[job_id, score, published_ms, first_wait_ms, max_wait_ms],
        )
        return None if wait is None else int(wait)

    # ------------------------------------------------------------------ checkpoints

    async def load_checkpoint(self, job_id: str, step: str) -> str | None:
        value = await self.client.hget(self.keys.job_checkpoints(job_id), step)
        return None if value is None else str(value)

    async def save_checkpoint(self, job_id: str, step: str, value: str) -> None:
        await self.client.hset(self.keys.job_checkpoints(job_id), step, value)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _event(
        job_id: str,
        tenant: str,
        job_type: str,
        kind: EventKind,
        attempt: int,
        **extra: Any,
    ) -> str:
        return JobEvent(
            event_id=new_id(),
            job_id=job_id,
            tenant=tenant,
            type=job_type,
            event=kind,
            at=utcnow(),
            attempt=attempt,
            # The trace crosses the outbox in the event (None, and free, when tracing is off).
            traceparent=current_traceparent(),
            **extra,
        ).model_dump_json(exclude_none=True)

    async def _apply(
        self,
        job_id: str,
        tenant: str,
        *,
        allowed: str,
        fields: dict[str, str],
        run: str = "",
        event: str = "",
        expire: int = 0,
        unstarted: str = "",
        score: int = 0,
        publish: str = "",
    ) -> TransitionResult:
        k = self.keys
        keys = (
            k.job(job_id),
            k.job_events(job_id),
            k.outbox,
            k.unstarted,
            k.tenant_jobs(tenant),
            k.job_checkpoints(job_id),
        )
        flat: list[str] = []
        for name, value in fields.items():
            flat.append(name)
            flat.append(value)
        args = (
            allowed,
            run,
            event,
            self._events_maxlen,
            expire,
            unstarted,
            score,
            publish,
            job_id,
            *flat,
        )
        applied, status, attempt, found_run = await self._call(keys, args)
        # A call re-sent after its reply was lost finds its own transition done:
        # the job holds the run that this call requires (complete, retry, ...)
        # or hands over (start). (Progress leaves the status `active`; hence the default.)
        own_run = run or fields.get("run", "")
        if not applied and own_run and found_run == own_run:
            applied = int(status == fields.get("status", "active"))
        return TransitionResult(bool(applied), str(status), int(attempt))

    async def _call(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> list[Any]:
        """One transition, waiting out a Redis outage for up to `outage_wait_s` (the
        outage policy's rule 2, `offload_runtime.outage`)."""
        result: list[Any] = await outage.ride_out(
            lambda: self._transition(keys, args), self._outage_wait_s
        )
        return result


def _cursor(score: float, job_id: str) -> str:
    return f"{int(score)}:{job_id}"


def _type(request: JobRequestBase) -> str:
    job_type: str = request.type
    return job_type
