"""Which retry tier a failed attempt waits in: a pure function, shared by every consumer.

No broker, no Redis: the retrying consumer, the job runner and the webhook
domain all ask the same question and get the same answer.
"""

from collections.abc import Sequence

from offload_runtime.settings import RetryTier


def pick_tier(tiers: Sequence[RetryTier], attempt: int, retry_after: float | None) -> RetryTier:
    """The tier for the retry after `attempt` failed.

    Attempt 1 waits in the first tier, attempt 2 in the second, and so on,
    staying in the last; a `retry_after` asks for the first tier at least
    that long instead (the last one when none is).
    """
    if not tiers:
        raise ValueError("no retry tiers configured")
    if retry_after is not None:
        return next((tier for tier in tiers if tier.delay_s >= retry_after), tiers[-1])
    return tiers[min(attempt - 1, len(tiers) - 1)]


def next_tier(
    tiers: Sequence[RetryTier], attempt: int, max_attempts: int, retry_after: float | None
) -> RetryTier | None:
    """Where the retry after a transient failure of `attempt` waits; None when it was the last."""
    if attempt >= max_attempts:
        return None
    return pick_tier(tiers, attempt, retry_after)


def exhausted(message: str, attempt: int, max_attempts: int) -> str:
    """The error a failure for good records once its attempts have run out."""
    return f"{message} (attempts exhausted: {attempt} of {max_attempts})"


__all__ = ["exhausted", "next_tier", "pick_tier"]
