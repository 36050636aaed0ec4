"""Payloads of the public HTTP API (DESIGN §2): what clients send and what they get back.

A submission is `{"type", "input", "webhook"?}`, discriminated by `type`, and
derived from each job type's spec (`jobs.JobSpec`): it reuses the type's input
model, so the gateway refuses a bad input with a 422 before anything is
recorded or queued. Errors are RFC 9457 problem details.
"""

from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from offload_contracts.base import Contract
from offload_contracts.errors import JobError
from offload_contracts.events import EventKind, Progress
from offload_contracts.jobs import BUILTIN_SPECS, JobSpec, JobStatus, model_name

# --------------------------------------------------------------------------- submissions


class WebhookSpec(Contract):
    """Where to deliver the job's events as signed webhooks (Standard Webhooks)."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="An http(s) URL that answers 2xx; private and loopback addresses are "
        "refused unless the deployment allows them.",
    )
    events: list[EventKind] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EventKind),
        description="Which events to deliver; the terminal ones (completed, failed, cancelled) "
        "when absent.",
    )


class SubmissionBase(Contract):
    """What every `POST /v1/jobs` body carries besides its `type` and `input`."""

    webhook: WebhookSpec | None = Field(
        default=None, description="Deliver this job's events to a URL as signed webhooks."
    )
    type: str
    input: Contract


@cache
def submission_model(spec: JobSpec[Any, Any]) -> type[SubmissionBase]:
    """The body of `POST /v1/jobs` for one job type: `type`, its `input`, and `webhook`."""
    article = "an" if spec.type[0] in "aeiou" else "a"
    literal: Any = Literal[spec.type]
    model: type[SubmissionBase] = create_model(
        f"{model_name(spec.type)}Submission",
        __base__=SubmissionBase,
        __module__=spec.input.__module__,
        __doc__=f"Submit {article} `{spec.type}` job: {spec.summary}.",
        type=(literal, ...),
        input=(spec.input, ...),
    )
    return model


def submission_union(specs: Iterable[JobSpec[Any, Any]]) -> Any:
    """The body of `POST /v1/jobs` for these job types, chosen by `type`."""
    models = tuple(submission_model(spec) for spec in specs)
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


SUBMISSION_MODELS: dict[str, type[SubmissionBase]] = {
    spec.type: submission_model(spec) for spec in BUILTIN_SPECS
}
JobSubmission = submission_union(BUILTIN_SPECS)
"""The body of `POST /v1/jobs` for the built-in types, chosen by `type`."""

# The built-in submission models by name, for code and tests that construct them.
AiGenerateSubmission = SUBMISSION_MODELS["ai.generate"]
ResearchRunSubmission = SUBMISSION_MODELS["research.run"]
VideoGenerateSubmission = SUBMISSION_MODELS["video.generate"]
ImageProcessSubmission = SUBMISSION_MODELS["image.process"]

# --------------------------------------------------------------------------- jobs


class JobLinks(Contract):
    """Where to read more about the job.

    `self` and `result` are paths on the gateway, relative to the URL the job was
    read from; `events` is absolute, since the notifier serves it on its own origin.
    """

    self: str = Field(description="This job: `GET` to read it, `DELETE` to cancel it.")
    events: str = Field(
        description="The job's events as Server-Sent Events: an absolute URL on the notifier."
    )
    result: str | None = Field(
        default=None, description="The result's file, when the job produced one."
    )


class JobView(Contract):
    """A job as its tenant sees it."""

    id: str = Field(description="Job id.")
    type: str = Field(description="Job type, e.g. `image.process`.")
    status: JobStatus = Field(description="Where the job is in its life.")
    attempt: int = Field(ge=0, description="The current or last attempt (0 before the first).")
    max_attempts: int = Field(ge=1, description="Attempts allowed before it fails for good.")
    progress: Progress | None = Field(default=None, description="Last reported progress.")
    result: dict[str, Any] | None = Field(
        default=None, description="The result, once completed (the type's result model)."
    )
    error: JobError | None = Field(
        default=None, description="Why the last attempt failed (while retrying, or failed)."
    )
    created_at: datetime = Field(description="When the job was accepted (UTC).")
    started_at: datetime | None = Field(default=None, description="When the last attempt began.")
    finished_at: datetime | None = Field(default=None, description="When it reached its end.")
    next_attempt_at: datetime | None = Field(
        default=None, description="When a delayed job's next attempt is due."
    )
    links: JobLinks = Field(description="Related resources.")


class JobPage(Contract):
    """One page of the tenant's jobs, newest first."""

    items: list[JobView] = Field(description="The jobs on this page.")
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; absent on the last page."
    )


# --------------------------------------------------------------------------- secrets, health


class WebhookSecretView(Contract):
    """The tenant's webhook signing secret."""

    secret: str = Field(description="The current secret (`whsec_…`); verify signatures with it.")
    signing: list[str] = Field(
        description="Every secret that signs now: the current one, and the previous one "
        "during a rotation's grace period."
    )


class Readiness(Contract):
    """Whether this replica can take work: its broker and Redis are reachable."""

    ready: bool = Field(description="Both dependencies are reachable.")
    broker: bool = Field(description="RabbitMQ is connected.")
    redis: bool = Field(description="Redis answers.")


# --------------------------------------------------------------------------- problems


class FieldProblem(Contract):
    """One invalid field of a request."""

    loc: list[str | int] = Field(description='Where: e.g. `["body", "input", "prompt"]`.')
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="Error code, e.g. `missing`, `string_too_short`.")


class Problem(Contract):
    """An RFC 9457 problem detail: every error answer of the API."""

    type: str = Field(default="about:blank", description="A URI identifying the problem type.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and what to do.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldProblem] | None = Field(
        default=None, description="Field errors, for invalid requests (422)."
    )


PROBLEM_MEDIA_TYPE: Literal["application/problem+json"] = "application/problem+json"

API_MODELS: dict[str, type[Contract]] = {
    "WebhookSpec": WebhookSpec,
    "JobView": JobView,
    "JobPage": JobPage,
    "WebhookSecretView": WebhookSecretView,
    "Readiness": Readiness,
    "Problem": Problem,
    **{f"{name}.submission": model for name, model in SUBMISSION_MODELS.items()},
}
"""Every API payload, for schema snapshots."""
