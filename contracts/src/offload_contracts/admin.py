"""Payloads of the admin API (`/v1/admin/*`, an admin key): what operators send and read.

Queues as a passive declare sees them, dead letters (browsed without being
consumed, replayed, purged), jobs of every tenant and the audit of operator
actions. Errors are the same RFC 9457 problem details as the public API's.
"""

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from offload_contracts.base import Contract
from offload_contracts.errors import JobError
from offload_contracts.events import JobEvent, Progress
from offload_contracts.jobs import JobStatus

JOB_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
"""What a job id looks like (Offload's own are 32 hex digits)."""

# --------------------------------------------------------------------------- queues


class QueueView(Contract):
    """One queue, as a passive declare sees it."""

    name: str = Field(description="Queue name, e.g. `image.jobs`.")
    service: str = Field(description="The service the queue belongs to.")
    kind: Literal["work", "retry", "dead"] = Field(description="Its role in the topology.")
    tier: str | None = Field(default=None, description="Retry tier, for `retry` queues.")
    exists: bool = Field(description="False when the queue is not declared on the broker.")
    ready: int | None = Field(description="Messages ready for delivery.")
    consumers: int | None = Field(description="Consumers attached.")
    stalled: bool = Field(
        default=False,
        description="A work queue with messages ready and no consumer: nothing will run them "
        "until a worker consumes again.",
    )
    unacked: int | None = Field(
        default=None,
        description="Deliveries handed to consumers and not yet acknowledged, as the "
        "consumers report them every second; 0 without consumers; null while consumers "
        "have not reported, or when the queue is missing (see `unacked_note`).",
    )


class QueuesView(Contract):
    """Every work, retry and dead queue of every service."""

    queues: list[QueueView] = Field(description="Every queue, in topology order.")
    dead_letters: int = Field(description="Ready messages across all dead queues.")
    unacked_note: str = Field(description="Where `unacked` comes from, and when it is null.")
    read_at: datetime = Field(description="When the broker was asked.")


# --------------------------------------------------------------------------- dead letters


class WebhookLetterView(Contract):
    """Where a parked webhook delivery (in `notifier.dead`) was going, without its secrets."""

    webhook_id: str = Field(
        description="The delivery's `webhook-id` header (the event's id); a replay sends the "
        "same one, so receivers can dedupe."
    )
    event: str | None = Field(description="The job event it delivers, e.g. `completed`.")
    url_origin: str | None = Field(
        description="`scheme://host[:port]` of the webhook URL; its path and query are not "
        "shown, since they often carry a token."
    )
    last_status: int | None = Field(
        description="The receiver's HTTP status on the last attempt; null when no answer came "
        "(connection refused, timeout) or the URL was refused."
    )


class DeadLetterView(Contract):
    """One parked message, as an operator reads it."""

    position: int = Field(description="0-based position in failure-time order.")
    job_id: str | None = Field(
        description="The job's id (for a webhook delivery, the job its event is about; null "
        "for a body that names none)."
    )
    type: str | None = Field(description="Job type.")
    tenant: str | None = Field(description="Owning tenant.")
    reason: str = Field(
        description="`failed` (Offload parked it with an error), or RabbitMQ's own dead-letter "
        "reason: `delivery_limit`, `rejected`, `expired`."
    )
    error: str | None = Field(description="Why the job failed, when Offload parked it.")
    error_type: str | None = Field(description="Error kind (`permanent`, `transient`, ...).")
    attempts: int | None = Field(description="Attempts made before it was parked.")
    failed_at: str | None = Field(description="When it was parked (ISO 8601).")
    source_queue: str | None = Field(description="The queue it came from.")
    browsed: int = Field(description="Times it has been read and put back (`x-delivery-count`).")
    size: int = Field(description="Body size in bytes.")
    valid_json: bool = Field(description="Whether the body is a JSON object.")
    webhook: WebhookLetterView | None = Field(
        default=None,
        description="For a webhook delivery (`notifier.dead`): where it was going; null for "
        "a job request.",
    )


class DeadLetterPageView(Contract):
    """A page of a dead queue. Reading it does not consume the messages."""

    queue: str = Field(description="The dead queue read, e.g. `image.dead`.")
    total: int = Field(description="Ready messages in the queue when read.")
    offset: int = Field(description="Position of the page's first letter.")
    limit: int = Field(description="Largest page asked for.")
    next_offset: int | None = Field(description="Offset of the next page; null on the last.")
    scanned: int = Field(
        description="Letters read to make the page (less than `total` past the scan limit)."
    )
    items: list[DeadLetterView] = Field(description="The letters, oldest failure first.")


class ReplayRequest(Contract):
    """Which dead letters to replay: some job ids, or all (up to the batch limit)."""

    job_ids: list[Annotated[str, Field(pattern=JOB_ID_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Replay these jobs' letters (in `notifier.dead`: every parked webhook "
        "delivery of these jobs).",
    )
    all: bool = Field(default=False, description="Replay every letter (up to the batch limit).")


class SkippedView(Contract):
    """A letter a replay left in its queue."""

    job_id: str | None = Field(description="The letter's job (null when it names none).")
    reason: str = Field(description="Why it was not replayed.")


class ReplayView(Contract):
    """What a replay did."""

    queue: str = Field(description="The dead queue replayed from.")
    replayed: list[str] = Field(
        description="Job ids put back to `waiting` and republished (in `notifier.dead`: jobs "
        "whose webhook deliveries were queued again)."
    )
    skipped: list[SkippedView] = Field(description="Letters left in the queue, and why.")
    not_found: list[str] = Field(description="Asked-for job ids with no letter in the queue.")
    scanned: int = Field(description="Letters looked at.")
    remaining: int = Field(description="Ready letters left in the queue afterwards.")
    audit_id: str = Field(description="Id of the audit entry recording this replay.")
    webhook_ids: list[str] | None = Field(
        default=None,
        description="In `notifier.dead`: the webhook ids queued for delivery again, attempts "
        "reset; null for a job queue.",
    )


class PurgeView(Contract):
    """What a purge did."""

    queue: str = Field(description="The dead queue purged.")
    purged: int = Field(description="Messages deleted.")
    audit_id: str = Field(description="Id of the audit entry recording this purge.")


class AuditEntry(Contract):
    """One operator action (a replay or a purge), from the `admin:audit` stream."""

    id: str = Field(description="Redis Stream id.")
    at: str = Field(description="When it was done (ISO 8601, UTC).")
    actor: str = Field(description="`admin:` + a hash of the admin key (never the key).")
    action: str = Field(description="`replay` or `purge`.")
    queue: str = Field(description="The dead queue acted on.")
    detail: dict[str, Any] = Field(
        description="What was asked and done: job ids, counts, an error if it stopped."
    )


# --------------------------------------------------------------------------- jobs


class AdminJobView(Contract):
    """A job as an operator sees it (any tenant)."""

    id: str = Field(description="Job id.")
    tenant: str = Field(description="The job's tenant.")
    type: str = Field(description="Job type, e.g. `image.process`.")
    status: JobStatus = Field(description="Where the job is in its life.")
    attempt: int = Field(description="The current or last attempt (0 before the first).")
    max_attempts: int = Field(description="Attempts allowed before it fails for good.")
    progress: Progress | None = Field(default=None, description="Last reported progress.")
    error: JobError | None = Field(default=None, description="Why the last attempt failed.")
    result: dict[str, Any] | None = Field(
        default=None, description="The result, once completed (in the job's detail only)."
    )
    created_at: datetime = Field(description="When the job was accepted (UTC).")
    started_at: datetime | None = Field(default=None, description="When the last attempt began.")
    finished_at: datetime | None = Field(default=None, description="When it reached its end.")
    next_attempt_at: datetime | None = Field(
        default=None, description="When a delayed job's next attempt is due."
    )


class AdminJobsView(Contract):
    """The newest jobs across the configured tenants, and their count by status."""

    jobs: list[AdminJobView] = Field(description="Newest first.")
    counts: dict[str, int] = Field(description="Status → jobs among those listed.")
    tenants: list[str] = Field(description="Tenants looked at (those with an API key).")


class TimelineEntry(Contract):
    """One event of a job's timeline."""

    stream_id: str = Field(description="Redis Stream id of the event.")
    event: JobEvent = Field(description="The event.")


class AdminJobDetail(Contract):
    """A job and its event timeline, oldest event first."""

    job: AdminJobView = Field(description="The job.")
    input: dict[str, Any] = Field(description="The job's input, as submitted.")
    events: list[TimelineEntry] = Field(description="Its events, oldest first.")


ADMIN_MODELS: dict[str, type[Contract]] = {
    "QueuesView": QueuesView,
    "DeadLetterPageView": DeadLetterPageView,
    "ReplayRequest": ReplayRequest,
    "ReplayView": ReplayView,
    "PurgeView": PurgeView,
    "AuditEntry": AuditEntry,
    "AdminJobsView": AdminJobsView,
    "AdminJobDetail": AdminJobDetail,
}
"""Every admin payload (nested models appear in these), for schema snapshots."""
