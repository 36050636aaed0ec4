"""The sweep: publish again the jobs that were accepted but never started.

A job is recorded `waiting` (and indexed in the `unstarted` set) before its
request is published. If the gateway dies between the two, or a confirm was
lost, the job would wait forever; the sweep republishes every job still
`waiting` past a deadline. A duplicate is harmless: the worker's start
compare-and-set lets only one delivery run the job.

A job can also wait because no worker consumes (the workers are down, or
stuck): then every copy stays in the queue. So the wait between two
republications of one job doubles, from `after_s` up to `backoff_max_s`, and
a long outage adds copies with the logarithm of its length, not in
proportion to it. The job is never given up on. The count behind the wait
lives in Redis beside the job, so every gateway replica, and the next
gateway process, go on from it.

With several gateway replicas a short lock lets one of them sweep at a time.
"""

import time
from dataclasses import dataclass
from typing import Protocol

from offload_contracts import JobRequestBase
from offload_runtime.logging import get_logger

log = get_logger("offload.gateway.sweep")


class UnstartedIndex(Protocol):
    """The `unstarted` sorted set and the sweep's lock.

    A job is due once its score is `after_s` old: its acceptance time at first,
    then wherever `postpone` moved it.
    """

    async def try_lock(self, token: str, ttl_s: float) -> bool: ...

    async def unlock(self, token: str) -> None: ...

    async def due(self, before_ms: int, limit: int) -> list[tuple[str, int]]:
        """`(id, score)` of the jobs scored before `before_ms`, oldest first."""
        ...

    async def postpone(
        self, job_id: str, score: int, published_ms: int, first_wait_ms: int, max_wait_ms: int
    ) -> int | None:
        """Count a republication of a job still waiting, and make it due again later.

        The wait from `published_ms` is `first_wait_ms` × 2ⁿ after the job's
        n-th republication, at most `max_wait_ms`; it is returned. None when
        the job is no longer indexed with `score` (it started, or another
        sweeper moved it on meanwhile): nothing is counted then.
        """
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
    backoff_max_s: float
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
        first_wait_ms = int(self.after_s * 1000)
        max_wait_ms = int(self.backoff_max_s * 1000)
        try:
            now_ms = int(time.time() * 1000)
            for job_id, score in await self.index.due(now_ms - first_wait_ms, self.batch):
                request = await self.jobs.waiting_request(job_id)
                if request is None:
                    await self.index.forget(job_id)
                    continue
                await self.publisher.publish(request)
                wait_ms = await self.index.postpone(
                    job_id, score, int(time.time() * 1000), first_wait_ms, max_wait_ms
                )
                republished += 1
                log.warning(
                    "unstarted job published again",
                    job_id=job_id,
                    type=request_type(request),
                    next_in_s=None if wait_ms is None else wait_ms / 1000,
                )
        finally:
            await self.index.unlock(self.token)
        return republished


def request_type(request: JobRequestBase) -> str:
    job_type: str = request.type
    return job_type
