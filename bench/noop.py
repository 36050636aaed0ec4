"""A job type that does nothing, and its worker: what is left of a job is the pipeline's cost.

    uv run python -m bench.noop     # the worker, settings from OFFLOAD_* as for any service

The gateway learns the type from `OFFLOAD_JOB_SPECS=bench.noop:NOOP`, the way
a deployment adds its own workload (docs/add-a-workload.md); the worker is
`build_worker` with this one handler, the same runtime as Offload's services.
"""

from typing import Any

from offload_contracts import Contract, JobPolicy, JobRequestBase
from offload_contracts.jobs import JobSpec
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_runtime.settings import WorkerSettings
from offload_runtime.worker import Worker, build_worker, job_handler, run_worker

SERVICE = "bench"


class NoopInput(Contract):
    n: int = 0


class NoopResult(Contract):
    ok: bool


NOOP: JobSpec[NoopInput, NoopResult] = JobSpec(
    type="bench.noop",
    service=SERVICE,
    input=NoopInput,
    result=NoopResult,
    policy=JobPolicy(max_attempts=3, timeout_s=60),
    summary="nothing (a benchmark's job: its run costs ≈ 0)",
    example={"type": "bench.noop", "input": {"n": 0}},
)


async def noop(request: JobRequestBase[NoopInput], ctx: JobContext) -> NoopResult:
    return NoopResult(ok=True)


HANDLER: JobHandler[Any] = job_handler(NOOP, noop)


def build(settings: WorkerSettings | None = None) -> Worker:
    return build_worker(service=SERVICE, settings=settings or WorkerSettings(), handlers=[HANDLER])


if __name__ == "__main__":
    run_worker(build())
