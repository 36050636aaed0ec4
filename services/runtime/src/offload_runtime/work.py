"""What the retrying consumer asks of the work it runs: plain types, no broker.

Domain code (the notifier's webhook deliverer) implements `Work` without
importing FastStream; the consumer (`offload_runtime.consumer`) drives it.
"""

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from offload_runtime.errors import JobFailure
from offload_runtime.settings import RetryTier

ItemT = TypeVar("ItemT")


class InvalidMessage(Exception):
    """A message body no contract accepts (raised by `Work.decode`)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt failed, as its retry or dead letter records it."""

    type: str
    message: str
    retryable: bool
    retry_after: float | None = None
    http_status: int | None = None

    @classmethod
    def of(cls, exc: BaseException) -> "Failure":
        """A `JobFailure` says what it is; any other exception is transient."""
        if isinstance(exc, JobFailure):
            return cls(
                type=exc.kind,
                message=exc.message,
                retryable=exc.retryable,
                retry_after=getattr(exc, "retry_after", None),
                http_status=exc.http_status,
            )
        return cls(type=type(exc).__name__, message=str(exc) or repr(exc), retryable=True)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the broker says about a message, beside its body."""

    body: bytes
    redelivered: bool


class Work(Protocol[ItemT]):
    """What one kind of message means; the consumer does the rest."""

    def decode(self, delivery: Delivery) -> ItemT:
        """The message's item; raise `InvalidMessage` when no contract accepts it."""
        ...

    def context(self, item: ItemT) -> AbstractContextManager[object]:
        """Held around everything done for `item` (logging fields, a trace span)."""
        ...

    def attempts(self, item: ItemT) -> tuple[int, int]:
        """(this attempt, the most attempts allowed)."""
        ...

    def message_id(self, item: ItemT) -> str:
        """The id its retries and dead letter carry."""
        ...

    def next_attempt(self, item: ItemT, tier: RetryTier, retry_after: float | None) -> bytes:
        """The body of the next attempt (its attempt counted up)."""
        ...

    async def begin(self, item: ItemT) -> bool:
        """Whether to run it (False: ack and drop it)."""
        ...

    async def run(self, item: ItemT) -> Any:
        """Do the work; raise `TransientError`, `PermanentError` or `Deferred`."""
        ...

    async def succeeded(self, item: ItemT, result: Any) -> None:
        """Record what `run` returned (before the ack)."""
        ...

    async def retrying(self, item: ItemT, failure: Failure, tier: RetryTier) -> bool:
        """Record the coming retry (before it is published); False: publish none."""
        ...

    async def failed(self, item: ItemT | None, body: bytes, failure: Failure) -> None:
        """Record a failure for good, after its dead letter (item None: invalid)."""
        ...


__all__ = ["Delivery", "Failure", "InvalidMessage", "Work"]
