"""The sweep stops when cancelled, even when the cancel breaks the call it lands in."""

import asyncio

from offload_contracts import JobRequestBase
from offload_gateway.sweep import Sweeper


class _Index:
    def __init__(self) -> None:
        self.in_pass = asyncio.Event()

    async def try_lock(self, token: str, ttl_s: float) -> bool:
        return True

    async def unlock(self, token: str) -> None:
        # As a Redis call does when its connection is torn down by the cancel.
        raise ConnectionError("connection closed while cancelling")

    async def due(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        self.in_pass.set()
        await asyncio.sleep(3600)  # the cancel lands here
        return []

    async def postpone(
        self, job_id: str, score: int, published_ms: int, first_wait_ms: int, max_wait_ms: int
    ) -> int | None:
        return None

    async def forget(self, job_id: str) -> None: ...


class _Jobs:
    async def waiting_request(self, job_id: str) -> JobRequestBase | None:
        return None


class _Publisher:
    connected = True

    async def publish(self, request: JobRequestBase) -> None: ...


async def test_a_cancel_that_breaks_the_unlock_still_stops_the_sweep() -> None:
    index = _Index()
    sweeper = Sweeper(
        index, _Jobs(), _Publisher(), after_s=1, backoff_max_s=1, interval_s=0.01, token="t"
    )
    task = asyncio.create_task(sweeper.run())
    await index.in_pass.wait()

    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)

    assert task in done, "the sweep swallowed its cancel and went on"
    assert task.cancelled()
