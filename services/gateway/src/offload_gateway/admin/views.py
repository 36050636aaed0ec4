"""What the admin API answers (OpenAPI schemas of `/v1/admin/*`)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from offload_contracts import JobError, JobEvent, JobStatus, Progress


class QueueView(BaseModel):
    """One queue, as a passive declare sees it."""

    name: str = Field(description="Queue name, e.g. `image.jobs`.")
    service: str = Field(description="The service the queue belongs to.")
    kind: Literal["work", "retry", "dead"] = Field(description="Its role in the topology.")
    tier: str | None = Field(default=None, description="Retry tier, for `retry` queues.")
    exists: bool = Field(description="False when the queue is not declared on the broker.")
    ready: int | None = Field(description="Messages ready for delivery.")
    consumers: int | None = Field(description="Consumers attached.")
    unacked: int | None = Field(
        default=None,
        description="Always null: AMQP does not report in-flight messages (see `unacked_note`).",
    )


class QueuesView(BaseModel):
    """Every work, retry and dead queue of every service."""

    queues: list[QueueView]
    dead_letters: int = Field(description="Ready messages across all dead queues.")
    unacked_note: str = Field(description="Why `unacked` is null, and where to read it.")
    read_at: datetime = Field(description="When the broker was asked.")


class DeadLetterView(BaseModel):
    """One parked message, as an operator reads it."""

    position: int = Field(description="0-based position in failure-time order.")
    job_id: str | None = Field(description="The job's id (null for a body that is not JSON).")
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


class DeadLetterPageView(BaseModel):
    """A page of a dead queue. Reading it does not consume the messages."""

    queue: str
    total: int = Field(description="Ready messages in the queue when read.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last.")
    scanned: int = Field(
        description="Letters read to make the page (less than `total` past the scan limit)."
    )
    items: list[DeadLetterView]


class ReplayRequest(BaseModel):
    """Which dead letters to replay: some job ids, or all (up to the batch limit)."""

    job_ids: list[str] | None = Field(
        default=None, min_length=1, max_length=1000, description="Replay these jobs' letters."
    )
    all: bool = Field(default=False, description="Replay every letter (up to the batch limit).")


class SkippedView(BaseModel):
    job_id: str | None
    reason: str


class ReplayView(BaseModel):
    """What a replay did."""

    queue: str
    replayed: list[str] = Field(description="Job ids put back to `waiting` and republished.")
    skipped: list[SkippedView] = Field(description="Letters left in the queue, and why.")
    not_found: list[str] = Field(description="Asked-for job ids with no letter in the queue.")
    scanned: int = Field(description="Letters looked at.")
    remaining: int = Field(description="Ready letters left in the queue afterwards.")
    audit_id: str = Field(description="Id of the audit entry recording this replay.")


class PurgeView(BaseModel):
    queue: str
    purged: int = Field(description="Messages deleted.")
    audit_id: str


class AdminJobView(BaseModel):
    """A job as an operator sees it (any tenant)."""

    id: str
    tenant: str
    type: str
    status: JobStatus
    attempt: int
    max_attempts: int
    progress: Progress | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None


class AdminJobsView(BaseModel):
    """The newest jobs across the configured tenants, and their count by status."""

    jobs: list[AdminJobView]
    counts: dict[str, int] = Field(description="Status → jobs among those listed.")
    tenants: list[str] = Field(description="Tenants looked at (those with an API key).")


class TimelineEntry(BaseModel):
    stream_id: str = Field(description="Redis Stream id of the event.")
    event: JobEvent


class AdminJobDetail(BaseModel):
    """A job and its event timeline, oldest event first."""

    job: AdminJobView
    input: dict[str, Any]
    events: list[TimelineEntry]


class AuditEntry(BaseModel):
    id: str = Field(description="Redis Stream id.")
    at: str
    actor: str = Field(description="`admin:` + a hash of the admin key (never the key).")
    action: str
    queue: str
    detail: dict[str, Any]
