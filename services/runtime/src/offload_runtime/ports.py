"""What a job function may ask of the runtime. Domain code depends on this Protocol only."""

from typing import Protocol


class JobContext(Protocol):
    """The running attempt of one job, as its job function sees it."""

    @property
    def job_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def cancel_requested(self) -> bool:
        """True once the job was cancelled (`DELETE /v1/jobs/{id}`), before its task is.

        A job function that catches `CancelledError` reads it to tell a user's
        cancel (clean up: stop the provider's work, remove partial files) from a
        timeout or a shutdown (keep them: the next attempt resumes from them).
        """
        ...

    async def progress(self, percent: float, message: str = "") -> None:
        """Report progress; throttled to two events a second per job."""
        ...

    async def load_checkpoint(self, step: str) -> str | None:
        """A step's saved output from an earlier attempt of this job, if any."""
        ...

    async def save_checkpoint(self, step: str, value: str) -> None:
        """Save a step's output so a retry resumes after it."""
        ...
