"""What the Offload API answers with, as the client sees it.

These views ignore fields they do not know, so a client keeps working when the
gateway adds one. Job statuses and event kinds come from `offload_contracts`,
the single definition shared with the services.
"""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from offload_contracts import EventKind, JobEvent, JobStatus

_VIEW = ConfigDict(extra="ignore", frozen=True)


class Progress(BaseModel):
    """How far an active job has got."""

    model_config = _VIEW

    percent: float = Field(default=0.0, description="0–100.")
    message: str = Field(default="", description="What the job is doing now.")


class ErrorInfo(BaseModel):
    """Why a job's last attempt failed."""

    model_config = _VIEW

    type: str = Field(description="`transient`, `permanent`, `timeout`, ...")
    message: str = Field(description="For a person.")
    retryable: bool = Field(default=False, description="Whether a later attempt may succeed.")


class FileInfo(BaseModel):
    """A file in Offload's storage: an upload, or a job's output."""

    model_config = _VIEW

    id: str = Field(description="Use with `download()` or `image.process` inputs.")
    url: str = Field(default="", description="Download path on the gateway.")
    bytes: int = Field(default=0, description="Size.")
    sha256: str = Field(default="", description="Hex SHA-256, checked by `download()`.")
    content_type: str = Field(default="application/octet-stream", description="MIME type.")


class Job(BaseModel):
    """A job as `GET /v1/jobs/{id}` shows it (DESIGN §2)."""

    model_config = _VIEW

    id: str
    type: str
    status: JobStatus
    attempt: int = 0
    max_attempts: int | None = None
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    links: dict[str, str | None] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing more will happen to it."""
        return self.status.is_terminal

    @property
    def percent(self) -> float:
        if self.status is JobStatus.COMPLETED:
            return 100.0
        return self.progress.percent if self.progress else 0.0

    def files(self) -> list[FileInfo]:
        """The files in the result: `file`, then each of `files[]` (thumbnails)."""
        if not self.result:
            return []
        found: list[FileInfo] = []
        main = self.result.get("file")
        if isinstance(main, dict):
            found.append(FileInfo.model_validate(main))
        for extra in self.result.get("files") or []:
            inner = extra.get("file") if isinstance(extra, dict) else None
            if isinstance(inner, dict):
                found.append(FileInfo.model_validate(inner))
        return found


class JobPage(BaseModel):
    """One page of `GET /v1/jobs`, newest first."""

    model_config = _VIEW

    items: list[Job] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next page.")


class Webhook(BaseModel):
    """Where Offload POSTs a job's events, signed (Standard Webhooks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    events: list[EventKind] | None = Field(
        default=None,
        description="Which events to deliver; the terminal ones (completed, failed, cancelled) "
        "when absent.",
    )


class WebhookLetter(BaseModel):
    """For a parked webhook delivery (`notifier.dead`): where it was going, without secrets."""

    model_config = _VIEW

    webhook_id: str = Field(description="The delivery's `webhook-id`, the same on a replay.")
    event: str | None = Field(default=None, description="The job event it carried.")
    url_origin: str | None = Field(default=None, description="The URL's scheme, host and port.")
    last_status: int | None = Field(default=None, description="The receiver's last HTTP status.")


class DeadLetter(BaseModel):
    """A message parked in a `<service>.dead` queue, as the admin API shows it."""

    model_config = _VIEW

    position: int = Field(default=0, description="0-based position, oldest failure first.")
    job_id: str | None = Field(default=None, description="Null for a body that is not JSON.")
    type: str | None = None
    tenant: str | None = None
    reason: str = Field(default="", description="`failed`, `delivery_limit`, `rejected`, ...")
    error: str | None = Field(default=None, description="Why the job failed.")
    error_type: str | None = None
    attempts: int | None = None
    failed_at: str | None = None
    source_queue: str | None = None
    webhook: WebhookLetter | None = Field(default=None, description="For `notifier.dead` only.")


class DeadLetterPage(BaseModel):
    """A page of a dead queue; reading it consumes nothing."""

    model_config = _VIEW

    queue: str
    total: int = Field(default=0, description="Messages in the queue when read.")
    next_offset: int | None = Field(default=None, description="Pass as `offset` for more.")
    items: list[DeadLetter] = Field(default_factory=list)


class ReplayReport(BaseModel):
    """What a replay did: jobs back to `waiting` and republished, and those left behind."""

    model_config = _VIEW

    queue: str
    replayed: list[str] = Field(default_factory=list)
    skipped: list[dict[str, Any]] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)
    remaining: int = 0
    webhook_ids: list[str] | None = Field(
        default=None, description="For `notifier.dead`: the deliveries sent again."
    )


_STATUS_AFTER: dict[EventKind, JobStatus] = {
    EventKind.QUEUED: JobStatus.WAITING,
    EventKind.STARTED: JobStatus.ACTIVE,
    EventKind.PROGRESS: JobStatus.ACTIVE,
    EventKind.RETRYING: JobStatus.DELAYED,
    EventKind.COMPLETED: JobStatus.COMPLETED,
    EventKind.FAILED: JobStatus.FAILED,
    EventKind.CANCELLED: JobStatus.CANCELLED,
}


def apply_event(job: Job, event: JobEvent) -> Job:
    """The job as it is after `event`: how a watcher follows a job from its SSE stream."""
    update: dict[str, Any] = {"status": _STATUS_AFTER[event.event], "attempt": event.attempt}
    if event.progress is not None:
        update["progress"] = Progress(
            percent=event.progress.percent, message=event.progress.message
        )
    if event.event in (EventKind.QUEUED, EventKind.STARTED) and event.progress is None:
        update["progress"] = None  # a new attempt starts from nothing
    if event.event is EventKind.STARTED:
        update["started_at"] = event.at
    if event.result is not None:
        update["result"] = event.result
    if event.error is not None:
        update["error"] = ErrorInfo.model_validate(event.error.model_dump())
    if event.next_attempt_at is not None:
        update["next_attempt_at"] = event.next_attempt_at
    if event.event.is_terminal:
        update["finished_at"] = event.at
    return job.model_copy(update=update)
