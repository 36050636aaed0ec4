"""What can go wrong, as typed exceptions.

Every error answer of the Offload API is an RFC 9457 problem document; the
client raises it as the `ApiError` subclass that matches its status, carrying
the parsed `Problem` so code can branch on it and people can read `detail`.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(default="", description="Short summary of the kind of problem.")
    status: int = Field(default=0, description="The HTTP status code.")
    detail: str = Field(default="", description="What went wrong this time, for a person.")
    instance: str | None = Field(default=None, description="The request it happened to.")

    @property
    def extensions(self) -> dict[str, Any]:
        """Members beyond the standard five (e.g. `errors` with a 422's field errors)."""
        return dict(self.model_extra or {})


class OffloadError(Exception):
    """Base class of everything this client raises."""


class ConnectionFailed(OffloadError):
    """Offload could not be reached (refused, DNS, TLS, timeout), so nothing was answered."""


class ApiError(OffloadError):
    """Offload answered with an error status; `problem` holds its problem details."""

    status: int
    problem: Problem
    retry_after: float | None

    def __init__(self, problem: Problem, *, status: int, retry_after: float | None = None) -> None:
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        summary = problem.detail or problem.title or f"HTTP {status}"
        super().__init__(f"{status} {problem.title or 'error'}: {summary}".strip())

    @property
    def detail(self) -> str:
        return self.problem.detail


class BadRequest(ApiError):
    """400: the request was malformed."""


class Unauthorized(ApiError):
    """401: no API key, or one Offload does not know."""


class Forbidden(ApiError):
    """403: the key is known but may not do this (e.g. the admin API with a tenant key)."""


class NotFound(ApiError):
    """404: no such job or file for this tenant (another tenant's look the same)."""


class Conflict(ApiError):
    """409: e.g. cancelling a finished job, or an idempotency key reused with another body."""


class PayloadTooLarge(ApiError):
    """413: the upload is over the size limit."""


class ValidationFailed(ApiError):
    """422: the input does not match the job type's contract; `errors` lists the fields."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        found = self.problem.extensions.get("errors")
        return list(found) if isinstance(found, list) else []


class RateLimited(ApiError):
    """429: the tenant's rate or the queue's depth limit is passed; retry after `retry_after`."""


class Unavailable(ApiError):
    """503: Offload cannot take work right now (e.g. the broker is unreachable)."""


class ServerError(ApiError):
    """Any other 5xx: a fault on Offload's side."""


class WaitTimeout(OffloadError):
    """`wait()` ran out of time before the job finished; `job` is the last state seen."""

    def __init__(self, job: Any, timeout_s: float) -> None:
        self.job = job
        self.timeout_s = timeout_s
        super().__init__(
            f"job {job.id} still {job.status} after {timeout_s:g}s (it keeps running; wait again)"
        )


class ChecksumMismatch(OffloadError):
    """A downloaded file's SHA-256 is not the one Offload recorded; the file was not kept."""


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status: int) -> type[ApiError]:
    """The exception class for an HTTP error status."""
    if status in ERRORS_BY_STATUS:
        return ERRORS_BY_STATUS[status]
    return ServerError if status >= 500 else ApiError
