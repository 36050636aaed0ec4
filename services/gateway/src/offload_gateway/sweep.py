"""The sweep: publish again the jobs that were accepted but never started.

A job is recorded `waiting` (and indexed in the `unstarted` set) before its
request is published. If the gateway dies between the two, or a confirm was
lost, the job would wait forever; the sweep republishes every job still
`waiting` past a deadline and moves its deadline on, so each such job is
published again at most once per deadline. A duplicate is harmless: the
worker's start compare-and-set lets only one delivery run the job.

With several gateway replicas a short lock lets one of them sweep at a time.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from offload_contracts import JobRequestBase
from offload_runtime.logging import get_logger

log = get_logger("offload.gateway.sweep")


class UnstartedIndex(Protocol):
    """The `unstarted` sorted set and the sweep's lock."""

    async def try_lock(self, token: str, ttl_s: float) -> bool: ...

    async def unlock(self, token: str) -> None: ...

    async def due(self, before_ms: int, limit: int) -> list[str]:
        """Ids accepted (or last republished) before `before_ms`, oldest first."""
        ...

    async def postpone(self, job_id: str, at_ms: int) -> None:
        """Move a job's deadline on, if it is still in the index."""
        ...

    async def forget(self, job_id: str) -> None: ...


class WaitingJobs(Protocol):
    async def waiting_request(self, job_id: str) -> JobRequestBase | None:
        """The request to publish for a job that is still `waiting`; None otherwise."""
        ...


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def publish(self, request: JobRequestBase) -> None: ...


@dataclass
class Sweeper:
    index: UnstartedIndex
    jobs: WaitingJobs
    publisher: Publisher
    after_s: float
    interval_s: float
    token: str
    batch: int = 500

    async def sweep_once(self) -> int:
        """One pass: returns how many jobs were published again."""
        if not self.publisher.connected:
            return 0
        if not await self.index.try_lock(self.token, max(self.interval_s * 2, 1.0)):
            return 0
        republished = 0
        try:
            now_ms = int(time.time() * 1000)
            for job_id in await self.index.due(now_ms - int(self.after_s * 1000), self.batch):
                request = await self.jobs.waiting_request(job_id)
                if request is None:
                    await self.index.forget(job_id)
                    continue
                await self.publisher.publish(request)
                await self.index.postpone(job_id, now_ms)
                republished += 1
                log.warning(
                    "unstarted job published again", job_id=job_id, type=request_type(request)
                )
        finally:
            await self.index.unlock(self.token)
        return republished

    async def run(self, on_republished: "RepublishCounter | None" = None) -> None:
        """Sweep every `interval_s` until cancelled; errors are logged, never fatal."""
        while True:
            try:
                count = await self.sweep_once()
                if count and on_republished is not None:
                    on_republished(count)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A cancel that lands while the pass releases its lock can come out
                # as another error (the Redis call it interrupted fails): honour it.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None
                log.warning("sweep pass failed; next pass will retry", exc_info=True)
            await asyncio.sleep(self.interval_s)


class RepublishCounter(Protocol):
    def __call__(self, count: int) -> None: ...


def request_type(request: JobRequestBase) -> str:
    job_type: str = request.type  # type: ignore[attr-defined]
    return job_type
