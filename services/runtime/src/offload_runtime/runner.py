"""The job runner: turns a domain function into a reliable RabbitMQ subscriber (DESIGN §5).

For each delivery:

1. Decode the envelope. Undecodable → the dead queue (and the job, if it can
   be found, `failed`), then ack.
2. `JobStore.start` (compare-and-set). A duplicate, stale or cancelled
   delivery is acked and dropped: a finished job never runs again.
3. Run the function under the job's timeout, reporting progress.
4. Record the outcome, then ack:
   - success → `completed`;
   - transient (TransientError, timeout, any unknown exception) with attempts
     left → `delayed`, then the request (attempt + 1) goes to a retry tier;
   - permanent, or attempts exhausted → the dead queue with the error, then
     `failed`.

Ack always comes after the outcome is recorded, so a worker that dies at any
point leaves its message unacked and RabbitMQ redelivers it; the store's
compare-and-set makes the redelivery harmless.
"""

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Generic, TypeVar, Union

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitMessage
from faststream.rabbit.subscriber import RabbitSubscriber
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from offload_contracts import JobError, JobPolicy, JobRequestBase, JobStatus, topology
from offload_runtime import metrics
from offload_runtime.broker import publish_confirmed, work_queue
from offload_runtime.errors import JobFailure, PermanentError, TransientError
from offload_runtime.logging import get_logger, job_context
from offload_runtime.ports import JobContext
from offload_runtime.settings import RetryTier
from offload_runtime.store import JobStore, new_id, utcnow

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


def pick_tier(tiers: Sequence[RetryTier], attempt: int, retry_after: float | None) -> RetryTier:
    """The tier for the retry after `attempt` failed.

    Attempt 1 waits in the first tier, attempt 2 in the second, and so on,
    staying in the last; a `retry_after` asks for the first tier at least
    that long instead.
    """
    if retry_after is not None:
        return next((tier for tier in tiers if tier.delay_s >= retry_after), tiers[-1])
    return tiers[min(attempt - 1, len(tiers) - 1)]


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


class JobRunner:
    """Consumes one service's work queue and runs its job handlers."""

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
        self._tiers = tuple(tiers)
        self._concurrency = concurrency
        self._delivery_limit = delivery_limit
        self._timeout_override_s = timeout_override_s
        self._running: dict[str, _RunningJob] = {}
        self.unacked = 0
        """Deliveries this process holds: handed to it, not yet acked or nacked."""
        self.deliveries = 0
        """Deliveries handed to this process so far."""
        self._cancel_listener: asyncio.Task[None] | None = None
        models = tuple(handler.request_model for handler in handlers)
        self._adapter: TypeAdapter[Any] = (
            TypeAdapter(models[0])
            if len(models) == 1
            else TypeAdapter(Annotated[Union[models], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007
        )

    # ------------------------------------------------------------------ wiring

    def subscribe(self) -> RabbitSubscriber:
        """Register the subscriber on the broker (no I/O; the broker declares on start)."""

        # The handler gets the raw message, not a decoded body: it must see the
        # bytes (to park what no contract accepts), the redelivered flag, and
        # ack itself. (With apply_types off, FastStream would otherwise spread a
        # JSON object body into keyword arguments.)
        async def passthrough(message: RabbitMessage) -> RabbitMessage:
            return message

        subscriber = self.broker.subscriber(
            work_queue(self.service, delivery_limit=self._delivery_limit),
            channel=Channel(prefetch_count=self._concurrency),
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            decoder=passthrough,
            title=f"{topology.work_queue(self.service)}:consume",
            description=f"Runs {', '.join(sorted(self._handlers))} jobs.",
        )
        subscriber(self.handle)
        return subscriber

    async def start(self) -> None:
        """Start listening for cancel notices (call after the store's Redis is reachable)."""
        self._cancel_listener = asyncio.create_task(self._listen_for_cancels())

    async def stop(self) -> None:
        """Stop the cancel listener and cancel jobs still running after the grace period.

        Their messages stay unacked, so the broker redelivers them to another replica.
        """
        if self._cancel_listener:
            self._cancel_listener.cancel()
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

    # ------------------------------------------------------------------ the hot path

    async def handle(self, message: RabbitMessage) -> None:
        """Process one delivery. Never raises, except when cancelled by shutdown."""
        self.unacked += 1
        self.deliveries += 1
        try:
            await self._handle(message)
        finally:
            self.unacked -= 1

    async def _handle(self, message: RabbitMessage) -> None:
        try:
            request: JobRequestBase = self._adapter.validate_json(message.body)
        except ValidationError as exc:
            await self._park_invalid(message, exc)
            return
        job_type: str = request.type  # type: ignore[attr-defined]
        with job_context(
            job_id=request.id, job_type=job_type, attempt=request.attempt, tenant=request.tenant
        ):
            try:
                await self._run(message, request, self._handlers[job_type])
            except Exception:
                # Redis or the broker stayed unreachable past what the store and
                # publisher wait for. An unacked message on a live channel would
                # sit here forever, so hand it back to the queue after a pause.
                log.error("job could not be recorded; returning it to the queue", exc_info=True)
                await asyncio.sleep(1)
                await _nack(message)

    async def _run(
        self, message: RabbitMessage, request: JobRequestBase, handler: JobHandler[Any]
    ) -> None:
        run_id = new_id()
        started = await self.store.start(request, run_id, redelivered=_redelivered(message))
        if not started.applied:
            log.info(
                "delivery skipped",
                found_status=started.previous_status,
                found_attempt=started.previous_attempt,
            )
            metrics.JOBS.labels(handler.job_type, "skipped").inc()
            if started.previous_status == JobStatus.CANCELLED and handler.on_cancelled:
                await self._clean_up_cancelled(request, handler, run_id)
            await _ack(message)
            return

        running = _RunningJob(self, request, run_id)
        self._running[request.id] = running
        timeout_s = self._timeout_override_s or handler.policy.timeout_s
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                result = await handler.run(request, running)
            payload = result.model_dump(mode="json")
        except asyncio.CancelledError:
            if not running.cancel_requested:
                raise  # shutdown: leave the message unacked for redelivery
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            log.info("job cancelled while running")
            metrics.JOBS.labels(handler.job_type, "cancelled").inc()
            await _ack(message)
            return
        except PermanentError as exc:
            await self._fail(message, request, _error_of(exc), run_id)
            return
        except TimeoutError:
            error = JobError(
                type="timeout", message=f"attempt timed out after {timeout_s:g}s", retryable=True
            )
            await self._retry_or_fail(message, request, error, run_id, None)
            return
        except Exception as exc:  # unknown → transient until attempts run out (DESIGN §5.2)
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            if not isinstance(exc, JobFailure):
                log.warning("job raised an unclassified error", exc_info=True)
            await self._retry_or_fail(message, request, _error_of(exc), run_id, retry_after)
            return
        finally:
            running.close()
            self._running.pop(request.id, None)
            metrics.JOB_DURATION.labels(handler.job_type).observe(time.perf_counter() - began)

        done = await self.store.complete(request, run_id, payload)
        if done.applied:
            metrics.JOBS.labels(handler.job_type, "completed").inc()
            metrics.JOB_ATTEMPTS.labels(handler.job_type, "completed").observe(request.attempt)
            log.debug("job completed")
        else:
            log.info("result discarded", found_status=done.previous_status)
        await _ack(message)

    async def _clean_up_cancelled(
        self, request: JobRequestBase, handler: JobHandler[Any], run_id: str
    ) -> None:
        assert handler.on_cancelled is not None
        try:
            await handler.on_cancelled(request, _RunningJob(self, request, run_id))
            log.info("cleaned up after a job cancelled between attempts")
        except Exception:
            log.warning("clean-up after a cancel failed", exc_info=True)

    # ------------------------------------------------------------------ failures

    async def _retry_or_fail(
        self,
        message: RabbitMessage,
        request: JobRequestBase,
        error: JobError,
        run_id: str,
        retry_after: float | None,
    ) -> None:
        if request.attempt >= request.max_attempts:
            exhausted = error.model_copy(
                update={
                    "message": f"{error.message} (attempts exhausted: "
                    f"{request.attempt} of {request.max_attempts})"
                }
            )
            await self._fail(message, request, exhausted, run_id)
            return
        tier = pick_tier(self._tiers, request.attempt, retry_after)
        next_attempt_at = utcnow() + timedelta(milliseconds=tier.delay_ms)
        # Record `delayed` before publishing the retry: a short tier can deliver
        # the next attempt before a later write would land. If this process dies
        # between the two, the unacked message comes back redelivered and
        # `JobStore.start` lets it take the `delayed` job over.
        recorded = await self.store.retry(request, run_id, error, next_attempt_at)
        if recorded.applied:
            retry_body = request.model_copy(update={"attempt": request.attempt + 1})
            await publish_confirmed(
                self.broker,
                retry_body.model_dump_json().encode(),
                routing_key=topology.retry_queue(self.service, tier.name),
                message_id=request.id,
            )
            metrics.JOBS.labels(_type(request), "retried").inc()
            log.info("job retrying", error=error.message, tier=tier.name)
        await _ack(message)

    async def _fail(
        self, message: RabbitMessage, request: JobRequestBase, error: JobError, run_id: str
    ) -> None:
        await self._dead_letter(message.body, error, request.attempt, request.id)
        await self.store.fail(
            request.id, request.tenant, _type(request), request.attempt, error, run_id=run_id
        )
        metrics.JOBS.labels(_type(request), "failed").inc()
        metrics.JOB_ATTEMPTS.labels(_type(request), "failed").observe(request.attempt)
        log.warning("job failed", error=error.message, error_type=error.type)
        await _ack(message)

    async def _park_invalid(self, message: RabbitMessage, exc: ValidationError) -> None:
        """A message no contract accepts: dead queue first, then the job (if any) `failed`."""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        error = JobError(
            type="invalid_message", message=f"message rejected: {problems}", retryable=False
        )
        await self._dead_letter(message.body, error, 0, None)
        metrics.JOBS.labels("unknown", "invalid").inc()
        job_id = _job_id_of(message.body)
        job = await self.store.get(job_id) if job_id else None
        if job is not None:
            await self.store.fail(job.id, job.tenant, job.type, job.attempt, error, run_id=None)
        log.warning("invalid message parked", error=error.message, job_id=job_id)
        await _ack(message)

    async def _dead_letter(
        self, body: bytes, error: JobError, attempt: int, job_id: str | None
    ) -> None:
        await publish_confirmed(
            self.broker,
            body,
            exchange=topology.DEAD_EXCHANGE,
            routing_key=self.service,
            message_id=job_id,
            headers={
                topology.HEADER_ERROR: error.message,
                topology.HEADER_ERROR_TYPE: error.type,
                topology.HEADER_ATTEMPT: attempt,
                topology.HEADER_FAILED_AT: utcnow().isoformat(),
                topology.HEADER_SOURCE_QUEUE: topology.work_queue(self.service),
            },
        )
        metrics.DEAD_LETTERS.labels(topology.dead_queue(self.service), error.type).inc()

    # ------------------------------------------------------------------ cancels

    async def _listen_for_cancels(self) -> None:
        """Cancel local jobs named on the cancel channel; resubscribe after Redis outages."""
        while True:
            try:
                async with self.store.cancel_notices() as notices:
                    async for job_id in notices:
                        if self.cancel_local(job_id):
                            log.info("cancel notice received", job_id=job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cancel listener lost Redis; resubscribing", exc_info=True)
                await asyncio.sleep(1)


def _error_of(exc: BaseException) -> JobError:
    if isinstance(exc, JobFailure):
        return JobError(type=exc.kind, message=exc.message, retryable=exc.retryable)
    return JobError(type=type(exc).__name__, message=str(exc) or repr(exc), retryable=True)


def _type(request: JobRequestBase) -> str:
    job_type: str = request.type  # type: ignore[attr-defined]
    return job_type


def _redelivered(message: RabbitMessage) -> bool:
    return bool(message.raw_message.redelivered)


def _job_id_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):
        return job_id
    return None


async def _nack(message: RabbitMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception:
        log.warning("nack failed; the message will be redelivered", exc_info=True)


async def _ack(message: RabbitMessage) -> None:
    """Ack; if the channel died meanwhile, the broker redelivers and the store dedupes."""
    try:
        await message.ack()
    except Exception:
        log.warning("ack failed; the message will be redelivered", exc_info=True)


__all__ = ["JobContext", "JobHandler", "JobRunner", "PermanentError", "TransientError", "pick_tier"]
