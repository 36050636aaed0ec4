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
    return tiers[min(max(attempt, 1) - 1, len(tiers) - 1)]


__all__ = ["pick_tier"]
