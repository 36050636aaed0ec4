"""The job runner: turns a domain function into a reliable job consumer (DESIGN §5).

The retrying consumer (`offload_runtime.consumer`) owns the broker side: ack,
retry tiers, dead letters, held counts, shutdown. The runner adds what a job
needs on top, as the consumer's `Work`:

1. Decode the request. Undecodable → the consumer parks it, and the runner
   fails the job if it can be found.
2. `JobStore.start` (compare-and-set). A duplicate, stale or cancelled
   delivery is acked and dropped: a finished job never runs again.
3. Run the function under the job's timeout, reporting progress.
4. Record the outcome before the consumer acks: success → `completed`;
   a retry → `delayed` (before the retry is published); a failure for good
   → `failed` (after the dead letter).

A worker that dies at any point leaves its message unacked and RabbitMQ
redelivers it; the store's compare-and-set makes the redelivery harmless.
"""

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Generic, TypeVar, Union

from faststream.rabbit import RabbitBroker
from faststream.rabbit.subscriber import RabbitSubscriber
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from offload_contracts import JobError, JobPolicy, JobRequestBase, JobStatus
from offload_runtime import metrics
from offload_runtime.consumer import RetryingConsumer
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.logging import get_logger, job_context
from offload_runtime.loops import BackgroundLoop
from offload_runtime.ports import JobContext
from offload_runtime.settings import RetryTier
from offload_runtime.store import JobStore, new_id, utcnow
from offload_runtime.work import Delivery, Failure, InvalidMessage

RequestT = TypeVar("RequestT", bound=JobRequestBase)

JobFunction = Callable[[RequestT, JobContext], Awaitable[BaseModel]]
CancelCleanup = Callable[[RequestT, JobContext], Awaitable[None]]

PROGRESS_INTERVAL_S = 0.5
"""At most two progress events a second per job (DESIGN §6)."""

log = get_logger("offload.runner")

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class JobHandler(Generic[RequestT]):
    """A job type's request model, the function that does its work, and its policy.

    `on_cancelled` cleans up after a job cancelled between attempts (`delayed`):
    its task is not running anywhere, so the cancel notice reaches nobody. The
    runner calls it when that job's next delivery finds it cancelled, with a
    context whose checkpoints are readable. Best effort: an error is logged.
    """

    request_model: type[RequestT]
    run: JobFunction[RequestT]
    policy: JobPolicy
    on_cancelled: CancelCleanup[RequestT] | None = None

    @property
    def job_type(self) -> str:
        job_type: str = self.request_model.model_fields["type"].default
        return job_type


class _RunningJob:
    """The JobContext a job function receives."""

    __slots__ = (
        "_flush",
        "_last_progress",
        "_pending",
        "_runner",
        "cancel_requested",
        "request",
        "run_id",
        "task",
    )

    def __init__(self, runner: "JobRunner", request: JobRequestBase, run_id: str) -> None:
        self._runner = runner
        self.request = request
        self.run_id = run_id
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.cancel_requested = False
        self._last_progress = 0.0
        self._pending: tuple[float, str] | None = None
        self._flush: asyncio.Task[None] | None = None

    @property
    def job_id(self) -> str:
        return self.request.id

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def attempt(self) -> int:
        return self.request.attempt

    async def progress(self, percent: float, message: str = "") -> None:
        # Throttled, trailing edge: within an interval only the latest report is
        # kept, and it is sent when the interval ends, so the last step's message
        # is never lost.
        wait = self._last_progress + PROGRESS_INTERVAL_S - time.monotonic()
        if wait > 0:
            self._pending = (percent, message)
            if self._flush is None:
                self._flush = asyncio.create_task(self._send_pending_after(wait))
            return
        # A report still pending (its timer is due but has not run) is older than
        # this one: drop it, or it would land after this one and move progress back.
        # Its timer goes too: left to run late, it would send the next report held
        # back at once, closer than the interval to this one.
        self._pending = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await self._send(percent, message)

    async def _send_pending_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._flush = None
        if self._pending is not None:
            percent, message = self._pending
            self._pending = None
            await self._send(percent, message)

    async def _send(self, percent: float, message: str) -> None:
        self._last_progress = time.monotonic()
        outcome = await self._runner.store.progress(self.request, self.run_id, percent, message)
        if not outcome.applied and outcome.previous_status == JobStatus.CANCELLED:
            # The cancel notice may have been missed (pub/sub reconnecting): stop now.
            self._runner.cancel_local(self.request.id)

    def close(self) -> None:
        """The attempt is over: a progress report still waiting is dropped."""
        if self._flush is not None:
            self._flush.cancel()

    async def load_checkpoint(self, step: str) -> str | None:
        return await self._runner.store.load_checkpoint(self.request.id, step)

    async def save_checkpoint(self, step: str, value: str) -> None:
        await self._runner.store.save_checkpoint(self.request.id, step, value)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One delivery of a job request, and the run id its transitions carry."""

    request: JobRequestBase
    handler: "JobHandler[Any]"
    run_id: str
    redelivered: bool


_CANCELLED = object()
"""What `JobRunner.run` returns for a job its user cancelled while it ran."""

CANCEL_POLL_S = 1.0
"""How long the cancel listener waits for a notice before it checks whether to stop."""


class JobRunner:
    """Consumes one service's work queue and runs its job handlers (the consumer's `Work`)."""

    def __init__(
        self,
        *,
        service: str,
        broker: RabbitBroker,
        store: JobStore,
        handlers: Sequence[JobHandler[Any]],
        tiers: Sequence[RetryTier],
        concurrency: int,
        delivery_limit: int,
        timeout_override_s: float | None = None,
    ) -> None:
        if not handlers:
            raise ValueError("a runner needs at least one handler")
        if not tiers:
            raise ValueError("a runner needs at least one retry tier")
        self.service = service
        self.broker = broker
        self.store = store
        self._handlers = {handler.job_type: handler for handler in handlers}
        self._timeout_override_s = timeout_override_s
        self._running: dict[str, _RunningJob] = {}
        self.consumer = RetryingConsumer(
            service=service,
            broker=broker,
            work=self,
            tiers=tiers,
            concurrency=concurrency,
            delivery_limit=delivery_limit,
            description=f"Runs {', '.join(sorted(self._handlers))} jobs.",
        )
        self._cancels = BackgroundLoop(f"cancel listener {service}", self._listen_for_cancels, 0)
        self._pubsub: Any = None
        models = tuple(handler.request_model for handler in handlers)
        self._adapter: TypeAdapter[Any] = (
            TypeAdapter(models[0])
            if len(models) == 1
            else TypeAdapter(Annotated[Union[models], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007
        )

    # ------------------------------------------------------------------ wiring

    def subscribe(self) -> RabbitSubscriber:
        """Register the subscriber on the broker (no I/O; the broker declares on start)."""
        return self.consumer.subscribe()

    @property
    def unacked(self) -> int:
        """Deliveries this process holds: handed to it, not yet acked or nacked."""
        return self.consumer.held

    @property
    def deliveries(self) -> int:
        """Deliveries handed to this process so far."""
        return self.consumer.deliveries

    async def start(self) -> None:
        """Start listening for cancel notices (call after the store's Redis is reachable)."""
        self._cancels.start()

    async def stop(self) -> None:
        """Stop the cancel listener and cancel jobs still running after the grace period.

        Their messages stay unacked, so the broker redelivers them to another replica.
        """
        await self._cancels.stop()
        await self._close_pubsub()
        for running in list(self._running.values()):
            if running.task and not running.task.done():
                running.task.cancel()

    def cancel_local(self, job_id: str) -> bool:
        """Cancel a job running in this process, if it is here."""
        running = self._running.get(job_id)
        if running is None or running.task is None or running.task.done():
            return False
        running.cancel_requested = True
        running.task.cancel()
        return True

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------------ the consumer's Work

    def decode(self, delivery: Delivery) -> _Attempt:
        try:
            request: JobRequestBase = self._adapter.validate_json(delivery.body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise InvalidMessage(f"message rejected: {problems}") from exc
        return _Attempt(request, self._handlers[request.type], new_id(), delivery.redelivered)

    def context(self, item: _Attempt) -> AbstractContextManager[None]:
        request = item.request
        return job_context(
            job_id=request.id,
            job_type=request.type,
            attempt=request.attempt,
            tenant=request.tenant,
        )

    def attempts(self, item: _Attempt) -> tuple[int, int]:
        return item.request.attempt, item.request.max_attempts

    def message_id(self, item: _Attempt) -> str:
        return item.request.id

    def next_attempt(self, item: _Attempt, tier: RetryTier, retry_after: float | None) -> bytes:
        request = item.request
        return (
            request.model_copy(update={"attempt": request.attempt + 1}).model_dump_json().encode()
        )

    async def begin(self, item: _Attempt) -> bool:
        request, handler = item.request, item.handler
        started = await self.store.start(request, item.run_id, redelivered=item.redelivered)
        if started.applied:
            return True
        log.info(
            "delivery skipped",
            found_status=started.previous_status,
            found_attempt=started.previous_attempt,
        )
        metrics.JOBS.labels(handler.job_type, "skipped").inc()
        if started.previous_status == JobStatus.CANCELLED and handler.on_cancelled:
            await self._clean_up_cancelled(request, handler, item.run_id)
        return False

    async def run(self, item: _Attempt) -> object:
        """The job's function under its timeout; a timeout is a transient failure."""
        request, handler = item.request, item.handler
        running = _RunningJob(self, request, item.run_id)
        self._running[request.id] = running
        timeout_s = self._timeout_override_s or handler.policy.timeout_s
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                result = await handler.run(request, running)
            return result.model_dump(mode="json")
        except asyncio.CancelledError:
            if not running.cancel_requested:
                raise  # shutdown: leave the message unacked for redelivery
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            log.info("job cancelled while running")
            metrics.JOBS.labels(handler.job_type, "cancelled").inc()
            return _CANCELLED
        except TimeoutError:
            raise _Timeout(f"attempt timed out after {timeout_s:g}s") from None
        finally:
            running.close()
            self._running.pop(request.id, None)
            metrics.JOB_DURATION.labels(handler.job_type).observe(time.perf_counter() - began)

    async def succeeded(self, item: _Attempt, result: object) -> None:
        if result is _CANCELLED:
            return
        assert isinstance(result, dict)
        request = item.request
        done = await self.store.complete(request, item.run_id, result)
        if done.applied:
            metrics.JOBS.labels(item.handler.job_type, "completed").inc()
            metrics.JOB_ATTEMPTS.labels(item.handler.job_type, "completed").observe(request.attempt)
            log.debug("job completed")
        else:
            log.info("result discarded", found_status=done.previous_status)

    async def retrying(self, item: _Attempt, failure: Failure, tier: RetryTier) -> bool:
        # If this process dies between this write and the retry's publish, the
        # unacked message comes back redelivered and `JobStore.start` lets it take
        # the `delayed` job over.
        request = item.request
        next_attempt_at = utcnow() + timedelta(milliseconds=tier.delay_ms)
        recorded = await self.store.retry(
            request, item.run_id, _job_error(failure), next_attempt_at
        )
        if recorded.applied:
            metrics.JOBS.labels(request.type, "retried").inc()
            log.info("job retrying", error=failure.message, tier=tier.name)
        return recorded.applied

    async def failed(self, item: _Attempt | None, body: bytes, failure: Failure) -> None:
        error = _job_error(failure)
        if item is None:  # a message no contract accepts: its job, if one can be found
            metrics.JOBS.labels("unknown", "invalid").inc()
            job_id = _job_id_of(body)
            job = await self.store.get(job_id) if job_id else None
            if job is not None:
                await self.store.fail(job.id, job.tenant, job.type, job.attempt, error, run_id=None)
            log.warning("invalid message parked", error=error.message, job_id=job_id)
            return
        request = item.request
        await self.store.fail(
            request.id, request.tenant, request.type, request.attempt, error, run_id=item.run_id
        )
        metrics.JOBS.labels(request.type, "failed").inc()
        metrics.JOB_ATTEMPTS.labels(request.type, "failed").observe(request.attempt)
        log.warning("job failed", error=error.message, error_type=error.type)

    async def _clean_up_cancelled(
        self, request: JobRequestBase, handler: JobHandler[Any], run_id: str
    ) -> None:
        assert handler.on_cancelled is not None
        try:
            await handler.on_cancelled(request, _RunningJob(self, request, run_id))
            log.info("cleaned up after a job cancelled between attempts")
        except Exception:
            log.warning("clean-up after a cancel failed", exc_info=True)

    # ------------------------------------------------------------------ cancels

    async def _listen_for_cancels(self) -> None:
        """One wait for a notice on the cancel channel; cancel the named job if it runs here.

        Each step waits at most `CANCEL_POLL_S`, so a stop is never held up. After
        a Redis outage the next step subscribes again, a second later.
        """
        try:
            if self._pubsub is None:
                self._pubsub = await self.store.cancel_subscription()
            notice = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=CANCEL_POLL_S
            )
        except Exception:
            await self._close_pubsub()
            await self._cancels.pause(1.0)
            raise
        if notice and notice.get("type") == "message" and self.cancel_local(notice["data"]):
            log.info("cancel notice received", job_id=notice["data"])

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:
                log.debug("cancel listener's pub/sub did not close cleanly", exc_info=True)


class _Timeout(TransientError):
    """The attempt outlived the job's timeout."""

    kind = "timeout"


def _job_error(failure: Failure) -> JobError:
    return JobError(type=failure.type, message=failure.message, retryable=failure.retryable)


def _job_id_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):
        return job_id
    return None


__all__ = ["JobContext", "JobHandler", "JobRunner", "PermanentError", "TransientError"]
