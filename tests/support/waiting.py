"""Waiting for something the system does on its own time: the one way tests poll.

    job = await wait_until(
        lambda: store.get(job_id),
        lambda record: record is not None and record.status is JobStatus.COMPLETED,
        timeout=10,
        what=f"job {job_id} completed",
    )

A test never sleeps and hopes: it asks again until the answer is the one it
waits for, and on time-out fails naming what it waited for and the last answer
it saw, which is usually the clue to what went wrong.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _truthy(value: Any) -> bool:
    return bool(value)


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool] = _truthy,
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[T], str] = repr,
) -> T:
    """Call `probe` until `done(answer)` holds and return that answer.

    `probe` is asked at once, then every `interval` seconds, the last time at
    the deadline; if no answer was the one awaited by then, an `AssertionError`
    says `what` was awaited and shows the last answer (through `describe`, for
    an answer too long to show whole).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await probe()
        if done(answer):
            return answer
        if loop.time() >= deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last seen: {describe(answer)}")
        await asyncio.sleep(min(interval, max(deadline - loop.time(), 0)))


def sync_probe(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """`check` as a probe for `wait_until`, for what is read without awaiting (a file, a count)."""

    async def probe() -> T:
        return check()

    return probe
