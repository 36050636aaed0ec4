"""Accepting a job: the gateway's one piece of domain logic (DESIGN §2).

Order of work: refuse at once if the broker is unreachable → claim the
`Idempotency-Key` (a key already held answers with its job, before any limit
is counted) → admit (rate and queue-depth limits) → record the job `waiting`
→ publish the request with a publisher confirm → answer 202. A refusal after
the claim releases the key. If the publish fails the job is recorded `failed`
(`not_accepted`) and its idempotency key released, so the client's retry
starts afresh and nothing is left `waiting`. If this process dies between
recording and publishing, the sweep (`sweep.py`) publishes the job later: no
accepted job is lost.

This module imports no broker, Redis or web framework: it works through the
ports below, which `adapters/` implement.
"""

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from offload_contracts import JobError, JobRequestBase, TraceContext
from offload_contracts.api import SubmissionBase
from offload_contracts.catalog import BUILTIN_CATALOG, JobCatalog
from offload_runtime.logging import get_logger

log = get_logger("offload.gateway.submission")

NOT_ACCEPTED = "not_accepted"
"""`JobError.type` of a job whose request the broker did not take."""


# --------------------------------------------------------------------------- outcomes


class SubmitRefused(Exception):
    """The job was not accepted; nothing of it stays `waiting`."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RateLimited(SubmitRefused):
    """The tenant passed its submissions-per-second limit."""


class QueueFull(SubmitRefused):
    """The job type's work queue holds more ready messages than the configured limit."""


class BrokerUnavailable(SubmitRefused):
    """The broker is unreachable or did not confirm the publish."""


class NotDurable(SubmitRefused):
    """The job was recorded, but not on enough Redis replicas in time
    (`OFFLOAD_REDIS_WAIT_REPLICAS`): a failover could lose it, so it is not accepted."""


class IdempotencyConflict(SubmitRefused):
    """The key was used for another body, or its first request is still in flight."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """The accepted job (new, or the one an earlier request with the same key made)."""

    job_id: str
    request: JobRequestBase | None
    """The request just published; None when the job was found through its key."""

    @property
    def replayed(self) -> bool:
        return self.request is None


# --------------------------------------------------------------------------- ports


class JobLedger(Protocol):
    """Where jobs are recorded (the Redis job store)."""

    async def record_waiting(
        self, request: JobRequestBase, webhook: dict[str, Any] | None, idempotency_key: str | None
    ) -> bool:
        """Record a new job `waiting`; False if its id exists already.

        Raises `NotDurable` when the record did not reach the replicas asked for in time.
        """
        ...

    async def record_not_accepted(self, request: JobRequestBase, error: JobError) -> None:
        """Record a job whose publish failed as `failed`."""
        ...


class RequestPublisher(Protocol):
    """Sends job requests to the workers (the `jobs` exchange)."""

    @property
    def connected(self) -> bool: ...

    async def publish(self, request: JobRequestBase) -> None:
        """Publish and wait for the confirm; raise on any failure."""
        ...

    def queue_depth(self, service: str) -> int | None:
        """Ready messages in the service's work queue, as last read (None: not known yet)."""
        ...


class IdempotencyKeys(Protocol):
    """Remembers which job an `Idempotency-Key` made, and for which body."""

    async def claim(self, tenant: str, key: str, job_id: str, fingerprint: str) -> str | None:
        """Claim `key` for `job_id`; if already claimed, return the stored `<job id> <fp>`."""
        ...

    async def release(self, tenant: str, key: str, job_id: str) -> None:
        """Forget the key if `job_id` still holds it."""
        ...


class RateLimiter(Protocol):
    async def hit(self, tenant: str) -> int | None:
        """Count one submission; the seconds to wait when over the limit, else None."""
        ...


class JobLookup(Protocol):
    async def exists(self, job_id: str) -> bool: ...


# --------------------------------------------------------------------------- the use case


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """A tenant asks for a job."""

    tenant: str
    submission: SubmissionBase
    job_id: str
    now: datetime
    idempotency_key: str | None = None
    trace: TraceContext | None = None

    @property
    def fingerprint(self) -> str:
        """The body as validated (defaults filled, keys in contract order), hashed."""
        return hashlib.sha256(self.submission.model_dump_json().encode()).hexdigest()


@dataclass
class JobSubmitter:
    """Accepts jobs through the ports; one instance per gateway process."""

    ledger: JobLedger
    publisher: RequestPublisher
    idempotency: IdempotencyKeys
    rate_limiter: RateLimiter
    jobs: JobLookup
    queue_depth_limit: int
    queue_full_retry_after: int
    unavailable_retry_after: int
    catalog: JobCatalog = BUILTIN_CATALOG
    """The job types this gateway accepts: their services and policies."""

    async def submit(self, command: SubmitJob) -> Submitted:
        if not self.publisher.connected:
            raise BrokerUnavailable(
                "the message broker is unreachable; the job was not accepted",
                retry_after=self.unavailable_retry_after,
            )
        key = command.idempotency_key
        if key is not None:
            replay = await self._claim(command, key)
            if replay is not None:
                return replay
        try:
            await self._admit(command)
            request = build_request(command, self.catalog)
            webhook = (
                command.submission.webhook.model_dump(mode="json", exclude_none=True)
                if command.submission.webhook
                else None
            )
            if not await self.ledger.record_waiting(request, webhook, key):
                raise IdempotencyConflict("a job with this id exists already; retry")
        except NotDurable as exc:
            # The master holds the job; recorded `failed` there too, it will not be
            # swept and run for a client that was told it was not accepted.
            with contextlib.suppress(Exception):
                await self.ledger.record_not_accepted(
                    request,
                    JobError(type=NOT_ACCEPTED, message=exc.message, retryable=True),
                )
            if key is not None:
                await self.idempotency.release(command.tenant, key, command.job_id)
            raise NotDurable(
                f"{exc.message}; the job was not accepted, try again shortly",
                retry_after=self.unavailable_retry_after,
            ) from exc
        except BaseException:
            if key is not None:
                await self.idempotency.release(command.tenant, key, command.job_id)
            raise
        try:
            await self.publisher.publish(request)
        except BaseException as exc:
            log.warning(
                "publish failed; job recorded not accepted", job_id=request.id, error=repr(exc)
            )
            # The broker may or may not have the message: record the job failed so
            # it is not left `waiting`; a copy that did arrive is skipped by the
            # worker's start compare-and-set.
            await self.ledger.record_not_accepted(
                request,
                JobError(
                    type=NOT_ACCEPTED,
                    message=f"the broker did not confirm the job ({type(exc).__name__}); "
                    "it was never queued",
                    retryable=True,
                ),
            )
            if key is not None:
                await self.idempotency.release(command.tenant, key, command.job_id)
            if isinstance(exc, Exception):
                raise BrokerUnavailable(
                    "the message broker did not confirm the job; it was not accepted",
                    retry_after=self.unavailable_retry_after,
                ) from exc
            raise
        return Submitted(request.id, request)

    async def _claim(self, command: SubmitJob, key: str) -> Submitted | None:
        held = await self.idempotency.claim(
            command.tenant, key, command.job_id, command.fingerprint
        )
        if held is None:
            return None
        job_id, _, fingerprint = held.partition(" ")
        if fingerprint != command.fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body"
            )
        if not await self.jobs.exists(job_id):
            raise IdempotencyConflict(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                retry_after=1,
            )
        return Submitted(job_id, None)

    async def _admit(self, command: SubmitJob) -> None:
        wait = await self.rate_limiter.hit(command.tenant)
        if wait is not None:
            raise RateLimited(
                "too many job submissions for this tenant; slow down", retry_after=wait
            )
        if self.queue_depth_limit:
            service = self.catalog.spec(command.submission.type).service
            depth = self.publisher.queue_depth(service)
            if depth is not None and depth >= self.queue_depth_limit:
                raise QueueFull(
                    f"the {command.submission.type} queue is full ({depth} jobs waiting); "
                    "retry later",
                    retry_after=self.queue_full_retry_after,
                )


def build_request(command: SubmitJob, catalog: JobCatalog = BUILTIN_CATALOG) -> JobRequestBase:
    """The message the workers receive for this submission."""
    spec = catalog.spec(command.submission.type)
    return spec.request(
        id=command.job_id,
        tenant=command.tenant,
        type=spec.type,
        max_attempts=spec.policy.max_attempts,
        created_at=command.now,
        trace=command.trace or TraceContext(),
        input=command.submission.input,
    )
