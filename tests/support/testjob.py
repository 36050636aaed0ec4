"""A job type for testing the runtime: its behaviour is chosen by its input."""

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from offload_contracts import Contract, JobPolicy, JobRequestBase
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler

SERVICE = "test"
JOB_TYPE = "test.job"


class ProbeInput(Contract):
    """What the probe job should do on each attempt."""

    transient_failures: int = Field(default=0, description="Fail this many attempts, transiently.")
    crash_failures: int = Field(
        default=0, description="Raise a plain RuntimeError this many times."
    )
    permanent: bool = Field(default=False, description="Fail permanently on the first attempt.")
    sleep_s: float = Field(default=0, description="Work this long.")
    block: bool = Field(default=False, description="First run waits until the test releases it.")
    progress_steps: int = Field(default=0, description="Report progress this many times.")
    retry_after: float | None = Field(default=None, description="Ask for a later retry.")


class ProbeRequest(JobRequestBase):
    type: Literal["test.job"] = "test.job"
    input: ProbeInput


class ProbeResult(Contract):
    attempt: int
    run: int


@dataclass
class Recorder:
    """What the probe job saw: each run's attempt and monotonic start time."""

    runs: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    released: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    finished: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: int = 0
    most_in_flight: int = 0

    def handler(self, *, max_attempts: int = 3, timeout_s: float = 10) -> JobHandler[ProbeRequest]:
        async def run(request: ProbeRequest, ctx: JobContext) -> ProbeResult:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                return await attempt(request, ctx)
            finally:
                self.in_flight -= 1

        async def attempt(request: ProbeRequest, ctx: JobContext) -> ProbeResult:
            runs = self.runs[request.id]
            runs.append((request.attempt, time.monotonic()))
            spec = request.input
            if spec.block and len(runs) == 1:
                await self.released[request.id].wait()
            for step in range(spec.progress_steps):
                await ctx.progress(100 * (step + 1) / spec.progress_steps, f"step {step + 1}")
                await asyncio.sleep(0.3)
            if spec.sleep_s:
                await asyncio.sleep(spec.sleep_s)
            if spec.permanent:
                raise PermanentError("the input can never work")
            if len(runs) <= spec.transient_failures:
                raise TransientError("provider busy", retry_after=spec.retry_after)
            if len(runs) <= spec.crash_failures:
                raise RuntimeError("unexpected crash")
            self.finished[request.id] += 1
            return ProbeResult(attempt=request.attempt, run=len(runs))

        return JobHandler(
            ProbeRequest, run, JobPolicy(max_attempts=max_attempts, timeout_s=timeout_s)
        )
