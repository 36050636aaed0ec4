"""The error taxonomy every job function and adapter speaks (DESIGN §5).

Adapters translate library errors into these two; the retrying consumer
routes them: transient → a delayed retry tier, permanent → the dead queue at
once. Any other exception is treated as transient until the attempts run out.
"""


class JobFailure(Exception):
    """Base of the errors a job function raises on purpose.

    `http_status` is the status of the HTTP answer that caused it, when there
    was one: a parked message carries it in its `x-offload-http-status` header.
    """

    retryable: bool = False
    kind: str = "error"

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class TransientError(JobFailure):
    """The attempt failed for a reason that may pass: a timeout, a 429, a 5xx, a dropped stream.

    `retry_after` (seconds) asks for a later attempt no sooner than that; the
    retrying consumer picks the first retry tier at least that long.
    """

    retryable = True
    kind = "transient"

    def __init__(
        self, message: str, *, retry_after: float | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class PermanentError(JobFailure):
    """The job can never succeed as asked: bad input, a 4xx, an undecodable file. No retry."""

    retryable = False
    kind = "permanent"


class Deferred(Exception):
    """Not yet: the message came back before its time. It waits `delay_s` more in a retry
    tier, and no attempt is counted (a `Retry-After` longer than every tier)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"deferred for {delay_s:g}s")
        self.delay_s = delay_s
