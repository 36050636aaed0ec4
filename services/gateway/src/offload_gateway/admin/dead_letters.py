"""Replaying dead letters: what happens to one parked job when an operator replays it.

The order is what makes a replay safe to repeat or interrupt:

1. the job goes back to `waiting` with its attempts reset (`JobStore.replay`,
   a compare-and-set from `failed`, which appends a `queued` event);
2. the request is published again to the `jobs` exchange as attempt 1, and
   the broker confirms it;
3. only then is the dead letter acked (by `AmqpQueues.sweep`, on "ack").

If the process dies after 1, the job is `waiting` at attempt 0 and the dead
letter is still there: the next replay finds it so and publishes it (step 2)
without a second transition. If it dies after 2, the next replay publishes a
second copy; the runner's compare-and-set runs the job only once. A job that
is no longer `failed` or freshly replayed (it completed, was cancelled, or is
running again) is left alone, and its dead letter stays for an operator to
purge.

`notifier.dead` holds webhook deliveries, not job requests: replaying one
(`WebhookReplayer`) publishes the same `WebhookDelivery` to the notifier's
work queue as attempt 1, then acks the letter. The job's state is not touched
(its event already happened), and the event, so the body and `webhook-id`,
is unchanged: a receiver that got an earlier attempt after all dedupes it.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import ValidationError

from offload_contracts import JOB_REQUEST_ADAPTER, REQUEST_MODELS, JobRequestBase, JobStatus
from offload_contracts.webhooks import WebhookDelivery
from offload_gateway.admin.queues import HeldMessage, TakeDecision
from offload_runtime.store import JobRecord, TransitionResult

Publish = Callable[[bytes, str, str], Awaitable[None]]
"""`publish(body, routing_key, job_id)` to the `jobs` exchange, returning after the confirm."""

PublishDelivery = Callable[[bytes, str], Awaitable[None]]
"""`publish(body, webhook_id)` to the notifier's work queue, returning after the confirm."""


class JobLedger(Protocol):
    """The part of `JobStore` a replay needs."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def replay(self, job: JobRecord) -> TransitionResult: ...


def actor_of(token: str) -> str:
    """A stable, non-secret name for an admin key: `admin:` + 12 hex of its SHA-256."""
    return "admin:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class Replayer:
    """Decides, for each held dead letter, whether it was replayed (ack) or stays (keep)."""

    def __init__(self, jobs: JobLedger, publish: Publish) -> None:
        self._jobs = jobs
        self._publish = publish
        self.replayed: list[str] = []
        self.skipped: list[tuple[str | None, str]] = []

    async def decide(self, held: HeldMessage) -> tuple[TakeDecision, str]:
        letter = held.letter
        request = _request_of(held.body)
        if request is None:
            return self._skip(letter.job_id, "not a valid job request: purge it or fix it by hand")
        body, job_type = request
        job_id = str(body["id"])
        if job_id in self.replayed:
            # An older copy of a job this call already put back: drop it.
            return "ack", "duplicate of a dead letter replayed in this call"
        job = await self._jobs.get(job_id)
        if job is None:
            return self._skip(job_id, "the job's record has expired: nothing to replay")
        if job.status == JobStatus.FAILED:
            outcome = await self._jobs.replay(job)
            if not outcome.applied:
                job = await self._jobs.get(job_id)
                if job is None:
                    return self._skip(job_id, "the job's record has expired: nothing to replay")
        if job.status not in (JobStatus.FAILED, JobStatus.WAITING) or (
            job.status == JobStatus.WAITING and job.attempt != 0
        ):
            return self._skip(job_id, f"the job is {job.status.value}: not replayed")
        body["attempt"] = 1
        body.pop("trace", None)  # a replay is a new operation, not the old request's trace
        await self._publish(json.dumps(body).encode(), job_type, job_id)
        self.replayed.append(job_id)
        return "ack", "replayed"

    def _skip(self, job_id: str | None, reason: str) -> tuple[TakeDecision, str]:
        self.skipped.append((job_id, reason))
        return "keep", reason


class WebhookReplayer:
    """Puts parked webhook deliveries back on the notifier's work queue, attempts reset."""

    def __init__(self, publish: PublishDelivery) -> None:
        self._publish = publish
        self.replayed: list[str] = []
        self.webhook_ids: list[str] = []
        self.skipped: list[tuple[str | None, str]] = []

    async def decide(self, held: HeldMessage) -> tuple[TakeDecision, str]:
        try:
            delivery = WebhookDelivery.model_validate_json(held.body)
        except ValidationError:
            reason = "not a webhook delivery: purge it or fix it by hand"
            self.skipped.append((held.letter.job_id, reason))
            return "keep", reason
        if delivery.webhook_id in self.webhook_ids:
            # The same event's delivery parked twice (the relay delivers at least once).
            return "ack", "duplicate of a delivery replayed in this call"
        again = delivery.model_copy(update={"attempt": 1, "not_before": None})
        await self._publish(again.model_dump_json(exclude_none=True).encode(), delivery.webhook_id)
        self.webhook_ids.append(delivery.webhook_id)
        if delivery.event.job_id not in self.replayed:
            self.replayed.append(delivery.event.job_id)
        return "ack", "replayed"


def _request_of(raw: bytes) -> tuple[dict[str, Any], str] | None:
    """The body as a dict and its job type, if it is a job request worth republishing.

    Known job types are checked against their contract (a message that was
    parked because no contract accepts it would only be parked again); other
    types (a deployment's own services) only need a valid envelope.
    """
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None
    job_type: str = body["type"]
    try:
        if job_type in REQUEST_MODELS:
            JOB_REQUEST_ADAPTER.validate_python(body)
        else:
            envelope = {k: v for k, v in body.items() if k in JobRequestBase.model_fields}
            JobRequestBase.model_validate(envelope)
    except ValidationError:
        return None
    return body, job_type
