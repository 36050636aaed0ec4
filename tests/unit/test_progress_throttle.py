"""The runner's progress throttle: at most one report per interval, newest wins, never backwards."""

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from offload_runtime.runner import PROGRESS_INTERVAL_S, _RunningJob
from offload_runtime.store import TransitionResult
from tests.support.testjob import ProbeInput, ProbeRequest


@dataclass
class _FakeStore:
    sent: list[float] = field(default_factory=list)

    async def progress(self, request: Any, run_id: str, percent: float, message: str) -> Any:
        self.sent.append(percent)
        return TransitionResult(True, "active", 1)


@dataclass
class _FakeRunner:
    store: _FakeStore = field(default_factory=_FakeStore)


def _job(runner: _FakeRunner) -> _RunningJob:
    request = ProbeRequest(
        id="j1", tenant="t", max_attempts=1, created_at=datetime.now(UTC), input=ProbeInput()
    )
    return _RunningJob(runner, request, "run-1")  # type: ignore[arg-type]


async def test_reports_inside_the_interval_collapse_to_the_newest() -> None:
    runner = _FakeRunner()
    job = _job(runner)
    await job.progress(10)
    await job.progress(20)
    await job.progress(30)
    await asyncio.sleep(PROGRESS_INTERVAL_S + 0.1)
    assert runner.store.sent == [10, 30]


async def test_a_report_sent_at_once_supersedes_one_still_pending() -> None:
    runner = _FakeRunner()
    job = _job(runner)
    await job.progress(10)
    await job.progress(20)  # pending: its timer runs at the end of the interval
    flush = job._flush
    assert flush is not None
    job._last_progress -= PROGRESS_INTERVAL_S  # the interval is over, the timer not run yet
    await job.progress(30)  # sent at once
    await flush

    assert runner.store.sent == [10, 30]  # 20 never lands after 30
