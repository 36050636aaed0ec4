"""Job events: what happened to a job, for SSE, webhooks and the events exchange."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from offload_contracts.base import Contract
from offload_contracts.errors import JobError


class EventKind(StrEnum):
    """The kinds of job event, in the past tense of what happened."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)


class Progress(Contract):
    """How far an active job has got."""

    percent: float = Field(ge=0, le=100, description="0–100.")
    message: str = Field(default="", max_length=500, description="What the job is doing now.")


INTERNAL_EVENT_FIELDS = frozenset({"traceparent"})
"""`JobEvent` fields Offload's services pass among themselves but never show to users."""


class JobEvent(Contract):
    """One transition of one job. Consumers dedupe by `event_id` (delivery is at least once)."""

    event_id: str = Field(description="Unique id of this event.")
    job_id: str = Field(description="The job.")
    tenant: str = Field(description="The job's tenant.")
    type: str = Field(description="The job's type, e.g. `image.process`.")
    event: EventKind = Field(description="What happened.")
    at: datetime = Field(description="When it happened (UTC).")
    attempt: int = Field(ge=0, description="The attempt it happened in (0 before the first).")
    progress: Progress | None = Field(default=None, description="For `progress` events.")
    result: dict[str, Any] | None = Field(default=None, description="For `completed` events.")
    error: JobError | None = Field(default=None, description="For `retrying` and `failed`.")
    next_attempt_at: datetime | None = Field(default=None, description="For `retrying` events.")
    traceparent: str | None = Field(
        default=None,
        max_length=256,
        description="Internal: the W3C `traceparent` of the span that recorded the event, when "
        "tracing is on, so the notifier's work for it joins the same trace. Never in what "
        "users receive (SSE, webhook bodies, `jobs.events` bodies).",
    )

    def public_json(self) -> str:
        """The event as users receive it: its JSON without the internal fields."""
        return self.model_dump_json(exclude_none=True, exclude=set(INTERNAL_EVENT_FIELDS))

    @property
    def routing_key(self) -> str:
        """Routing key on the `jobs.events` exchange: `<type>.<event>`."""
        return f"{self.type}.{self.event.value}"
