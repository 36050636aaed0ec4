"""The runner's progress throttle: at most one event per interval, the newest report wins."""

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from offload_runtime.runner import PROGRESS_INTERVAL_S, _RunningJob
from offload_runtime.store import TransitionResult, new_id
from tests.support.testjob import ProbeInput, ProbeRequest


@dataclass
class _RecordingStore:
    sent: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, percent)

    async def progress(
        self, request: Any, run_id: str, percent: float, message: str
    ) -> TransitionResult:
        self.sent.append((time.monotonic(), percent))
        return TransitionResult(True, "active", 1)


@dataclass
class _Runner:
    store: _RecordingStore = field(default_factory=_RecordingStore)

    def cancel_local(self, job_id: str) -> bool:
        return False


def _job(runner: _Runner) -> _RunningJob:
    request = ProbeRequest(
        id=new_id(), tenant="acme", max_attempts=1, created_at=datetime.now(UTC), input=ProbeInput()
    )
    return _RunningJob(runner, request, new_id())  # type: ignore[arg-type]


async def test_a_late_timer_does_not_send_the_next_report_early() -> None:
    runner = _Runner()
    job = _job(runner)
    await job.progress(10)  # sent at once
    await job.progress(20)  # held back: its timer is due at +0.5 s
    await asyncio.sleep(0)  # the timer starts
    # The loop is busy past that moment, so the timer is due but has not run when
    # the next report comes: that one is sent at once (20 is older: dropped)...
    time.sleep(PROGRESS_INTERVAL_S + 0.05)  # noqa: ASYNC251 (a busy loop, on purpose)
    await job.progress(30)
    # ...and the one right after it is held back for a whole interval, not sent by
    # the stale timer as soon as the loop runs it.
    await job.progress(40)
    await asyncio.sleep(PROGRESS_INTERVAL_S + 0.2)
    job.close()

    assert [percent for _, percent in runner.store.sent] == [10, 30, 40]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(runner.store.sent)]
    assert min(gaps) >= PROGRESS_INTERVAL_S - 0.01, gaps
