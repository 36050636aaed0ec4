"""The Redis job store: one atomic Lua compare-and-set per transition (DESIGN §4).

Each transition checks the job's current status (and attempt, and the id of
the run that owns it), writes the new fields, and appends the transition's
event to the job's stream and to the event outbox, all in one script. So a
redelivered or duplicated message can never run a finished job again nor move
a job backwards, and state and events never disagree.
"""

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.asyncio.client import PubSub

from offload_contracts import EventKind, JobError, JobEvent, JobRequestBase, JobStatus, Progress
from offload_runtime import outage
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import get_logger
from offload_runtime.redis import ScriptBatcher
from offload_runtime.telemetry import current_traceparent
from offload_runtime.transitions import TRANSITIONS, Expiry, Transition

TRANSITION_LUA = r"""
-- KEYS (all of one shard, so one slot): 1 job hash, 2 job events, 3 the shard's outbox,
--       4 the shard's unstarted zset, 5 the tenant's jobs zset of the shard, 6 checkpoints
-- ARGV: 1 allowed 'status:attempt' pairs joined by '|' ('*' = any attempt, 'none' = absent)
--       2 run id the job must hold ('' = no check)   3 event JSON ('' = none)
--       4 job events cap   5 expire seconds (0 keep, -1 persist)
--       6 unstarted set: 'add' | 'rem' | ''   7 score (ms) for 'add' and for a new job
--       8 channel to publish the job id on ('' = none)   9 job id
--       10 '1': a refused call still writes (see below)   11.. field, value pairs to set
--       ('' means unset)
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'run')
local status = cur[1] or 'none'
local attempt = cur[2] or '0'
local ok = false
for pair in string.gmatch(ARGV[1], '[^|]+') do
  local s, a = string.match(pair, '^([^:]+):(.+)$')
  if s == status and (a == '*' or a == attempt) then ok = true; break end
end
if ok and ARGV[2] ~= '' and cur[3] ~= ARGV[2] then ok = false end
if not ok then
  -- A caller that then WAITs for replicas needs its connection to have written after the
  -- change it waits for, even when this call (a re-send) finds that change made.
  if ARGV[10] == '1' and status ~= 'none' then redis.call('HSET', KEYS[1], 'status', status) end
  return {0, status, attempt, cur[3] or ''}
end
if #ARGV >= 12 then
  local fields = {}
  for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
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

"""Errors that mean "Redis is away for now": a transition waits them out."""


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


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """Whether a transition happened, and the status and attempt it found."""

    applied: bool
    previous_status: str
    previous_attempt: int


class JobStore:
    """Job state and events in Redis. Every transition is one `TRANSITION_LUA` call.

    The transitions are the rows of `transitions.TRANSITIONS`; this class
    only executes them. Its Redis client and key names are its own: other
    code reads jobs through its methods (or `listing.JobListing`).
    """

    def __init__(
        self,
        client: "aioredis.Redis",
        keys: RedisKeys,
        *,
        retention_s: int,
        events_maxlen: int = 1000,
        outage_wait_s: float = 0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        """`outage_wait_s`: how long a transition waits for Redis to come back
        (`offload_runtime.outage`).

        Workers wait (a message stays unacked meanwhile, nothing is lost); the
        gateway does not (its client gets a 503 at once).

        `wait_replicas`: every transition but `progress` returns only once that
        many replicas of its master hold it (`WAIT`, at most `wait_timeout_ms`),
        else raises `redis.NotReplicated` (the write is made on the master, and
        may or may not survive a failover). Redis replicates asynchronously: a
        write the master acknowledged and had not yet sent on is lost when a
        replica takes over. 0: no wait. A worker waits `NotReplicated` out like
        an outage (`outage_wait_s`), re-sending the transition: the re-send
        finds its change made, and writes anyway, so that its `WAIT` covers it.
        """
        self._client = client
        self._keys = keys
        self._retention_s = retention_s
        self._events_maxlen = events_maxlen
        self._outage_wait_s = outage_wait_s
        self._wait_replicas = wait_replicas
        self._transition = ScriptBatcher(client, TRANSITION_LUA, replica_timeout_ms=wait_timeout_ms)
        self._postpone_unstarted = ScriptBatcher(client, POSTPONE_UNSTARTED_LUA)

    async def aclose(self) -> None:
        """Close the Redis client this store was given (for an owner that keeps no other use)."""
        await self._client.aclose()

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> JobRecord | None:
        data: dict[str, str] = await self._client.hgetall(self._keys.job(job_id))  # type: ignore[assignment]
        return JobRecord.from_hash(data) if data else None

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, str | None]:
        """Each job's status (None for a job that does not exist), read in one pipeline."""
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._keys.job(job_id), "status")
            found = await pipe.execute()
        return {
            job_id: None if status is None else str(status)
            for job_id, status in zip(job_ids, found, strict=True)
        }

    async def exists(self, job_id: str) -> bool:
        return bool(await self._client.exists(self._keys.job(job_id)))

    async def events(self, job_id: str) -> list[tuple[str, str]]:
        """The job's stored events, oldest first: `(stream id, event JSON)`."""
        entries: list[tuple[str, dict[str, str]]] = await self._client.xrange(  # type: ignore[assignment]
            self._keys.job_events(job_id)
        )
        return [(entry_id, fields.get("data", "")) for entry_id, fields in entries]

    async def cancel_subscription(self) -> "PubSub":
        """A pub/sub subscribed to cancel notices (each message's `data`: a cancelled job's
        id, to stop it where it runs). The caller reads it and closes it."""
        pubsub = self._client.pubsub()
        await pubsub.subscribe(self._keys.cancel_channel)
        return pubsub

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
            TRANSITIONS["create"],
            request.id,
            request.tenant,
            job_type,
            attempt=0,
            score=int(request.created_at.timestamp() * 1000),
            fields=fields,
        )
        if not created.applied and created.previous_status == JobStatus.WAITING:
            return TransitionResult(True, "none", 0)
        return created

    async def start(
        self, request: JobRequestBase, run_id: str, *, redelivered: bool
    ) -> TransitionResult:
        """`waiting|delayed → active` for attempt n, owned by `run_id` (see `take_over`)."""
        return await self._apply(
            TRANSITIONS["take_over" if redelivered else "start"],
            request.id,
            request.tenant,
            _type(request),
            attempt=request.attempt,
            run=run_id,
            fields={
                "attempt": str(request.attempt),
                "started_at": _iso(utcnow()),
                "next_attempt_at": "",
            },
        )

    async def progress(
        self, request: JobRequestBase, run_id: str, percent: float, message: str
    ) -> TransitionResult:
        progress = Progress(percent=max(0.0, min(100.0, percent)), message=message[:500])
        return await self._apply(
            TRANSITIONS["progress"],
            request.id,
            request.tenant,
            _type(request),
            attempt=request.attempt,
            run=run_id,
            extra={"progress": progress},
            fields={"progress": progress.model_dump_json()},
        )

    async def complete(
        self, request: JobRequestBase, run_id: str, result: dict[str, Any]
    ) -> TransitionResult:
        return await self._apply(
            TRANSITIONS["complete"],
            request.id,
            request.tenant,
            _type(request),
            attempt=request.attempt,
            run=run_id,
            extra={"result": result},
            fields={
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
            TRANSITIONS["retry"],
            request.id,
            request.tenant,
            _type(request),
            attempt=request.attempt,
            run=run_id,
            extra={"error": error, "next_attempt_at": next_attempt_at},
            fields={
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
        return await self._apply(
            TRANSITIONS["fail_run" if run_id else "fail"],
            job_id,
            tenant,
            job_type,
            attempt=attempt,
            run=run_id or "",
            extra={"error": error},
            fields={
                "error": error.model_dump_json(),
                "finished_at": _iso(utcnow()),
                "next_attempt_at": "",
            },
        )

    async def cancel(self, job: JobRecord) -> TransitionResult:
        """`waiting|delayed|active → cancelled`; an active job's worker is told to stop."""
        return await self._apply(
            TRANSITIONS["cancel"],
            job.id,
            job.tenant,
            job.type,
            attempt=job.attempt,
            fields={"finished_at": _iso(utcnow()), "next_attempt_at": "", "run": ""},
        )

    async def replay(self, job: JobRecord) -> TransitionResult:
        """`failed → waiting` with attempts reset (a dead letter replayed by an operator)."""
        return await self._apply(
            TRANSITIONS["replay"],
            job.id,
            job.tenant,
            job.type,
            attempt=0,
            score=int(utcnow().timestamp() * 1000),
            fields={
                "attempt": "0",
                "error": "",
                "result": "",
                "progress": "",
                "started_at": "",
                "finished_at": "",
                "republished": "",  # the sweep's backoff starts over
            },
        )

    # ------------------------------------------------------------------ the unstarted index

    async def due_unstarted(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        """`(id, score)` of up to `limit` unstarted jobs scored before `before_ms`, oldest
        first, over every shard."""
        keys = [self._keys.unstarted(shard) for shard in self._keys.all_shards]
        per_shard: list[list[tuple[str, float]]] = await asyncio.gather(  # type: ignore[assignment]
            *(
                self._client.zrangebyscore(
                    key, "-inf", before_ms, start=0, num=limit, withscores=True
                )
                for key in keys
            )
        )
        entries = sorted(
            ((str(job_id), int(score)) for found in per_shard for job_id, score in found),
            key=lambda entry: entry[1],
        )
        return entries[:limit]

    async def forget_unstarted(self, job_id: str) -> None:
        await self._client.zrem(self._keys.unstarted(self._keys.shard(job_id)), job_id)

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
            (self._keys.unstarted(self._keys.shard(job_id)), self._keys.job(job_id)),
            (job_id, score, published_ms, first_wait_ms, max_wait_ms),
        )
        return None if wait is None else int(wait)

    # ------------------------------------------------------------------ checkpoints

    async def load_checkpoint(self, job_id: str, step: str) -> str | None:
        value = await self._client.hget(self._keys.job_checkpoints(job_id), step)
        return None if value is None else str(value)

    async def save_checkpoint(self, job_id: str, step: str, value: str) -> None:
        await self._client.hset(self._keys.job_checkpoints(job_id), step, value)

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
        transition: Transition,
        job_id: str,
        tenant: str,
        job_type: str,
        *,
        attempt: int,
        fields: dict[str, str],
        run: str = "",
        extra: dict[str, Any] | None = None,
        score: int = 0,
    ) -> TransitionResult:
        """Execute one row of the transition table for a job, atomically."""
        k = self._keys
        shard = k.shard(job_id)
        keys = (
            k.job(job_id),
            k.job_events(job_id),
            k.outbox(shard),
            k.unstarted(shard),
            k.tenant_jobs(tenant, shard),
            k.job_checkpoints(job_id),
        )
        fields = {"status": transition.target.value, **fields}
        if transition.takes_run:
            fields["run"] = run
        flat: list[str] = []
        for name, value in fields.items():
            flat.append(name)
            flat.append(value)
        expire = {
            Expiry.KEEP: 0,
            Expiry.RETENTION: self._retention_s,
            Expiry.PERSIST: -1,
        }[transition.expiry]
        event = self._event(job_id, tenant, job_type, transition.event, attempt, **(extra or {}))
        replicas = 0 if transition.event is EventKind.PROGRESS else self._wait_replicas
        args = (
            transition.allowed(attempt),
            run if transition.requires_run else "",
            event,
            self._events_maxlen,
            expire,
            transition.unstarted.value,
            score,
            k.cancel_channel if transition.notify_cancel else "",
            job_id,
            "1" if replicas else "",
            *flat,
        )
        applied, status, found_attempt, found_run = await self._call(keys, args, replicas)
        # A call re-sent after its reply was lost finds its own transition done:
        # the job holds the run that this call requires (complete, retry, ...)
        # or hands over (start), and the transition's target status.
        if not applied and run and found_run == run:
            applied = int(status == transition.target.value)
        return TransitionResult(bool(applied), str(status), int(found_attempt))

    async def _call(self, keys: tuple[str, ...], args: tuple[Any, ...], replicas: int) -> list[Any]:
        """One transition, waiting out a Redis outage for up to `outage_wait_s` (the
        outage policy's rule 2, `offload_runtime.outage`)."""
        result: list[Any] = await outage.ride_out(
            lambda: self._transition(keys, args, replicas=replicas), self._outage_wait_s
        )
        return result


def _type(request: JobRequestBase) -> str:
    job_type: str = request.type
    return job_type
