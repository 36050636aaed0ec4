"""The error taxonomy every job function and adapter speaks (DESIGN §5).

Adapters translate library errors into these two; the runner routes them:
transient → a delayed retry tier, permanent → the dead queue at once. Any
other exception is treated as transient until the job's attempts run out.
"""


class JobFailure(Exception):
    """Base of the errors a job function raises on purpose."""

    retryable: bool = False
    kind: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(JobFailure):
    """The attempt failed for a reason that may pass: a timeout, a 429, a 5xx, a dropped stream.

    `retry_after` (seconds) asks for a later attempt no sooner than that; the
    runner picks the first retry tier at least that long.
    """

    retryable = True
    kind = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(JobFailure):
    """The job can never succeed as asked: bad input, a 4xx, an undecodable file. No retry."""

    retryable = False
    kind = "permanent"
