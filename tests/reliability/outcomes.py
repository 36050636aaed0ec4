"""Measure what a fault did to the jobs it hit, and keep the figures for the run's summary.

Every reliability test ends with `await settle(...)`: it waits until each job
it submitted reaches a terminal state (or the deadline passes), counts
completed, lost and duplicated jobs, and records the row; the session prints
the table (`docs/reliability.md` is written from it).
"""

import json
import time
from dataclasses import asdict, dataclass

from offload_contracts import JobEvent, JobStatus
from offload_runtime.store import JobRecord, JobStore
from tests.support.waiting import wait_until

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
RESULTS: list[dict[str, object]] = []


@dataclass(frozen=True)
class Outcome:
    scenario: str
    load: str
    accepted: int
    completed: int
    failed: int
    lost: int  # accepted but never finished (missing, or stuck waiting/active/delayed)
    duplicated: int  # completed more than once as recorded (more than one `completed` event)
    seconds: float
    # For each job that did not complete: its last status and recorded event trail.
    unfinished: tuple[str, ...] = ()

    def assert_nothing_lost_or_duplicated(self) -> None:
        detail = "\n".join([str(self), *self.unfinished])
        assert (self.lost, self.duplicated, self.failed) == (0, 0, 0), detail
        assert self.completed == self.accepted, detail


def _unfinished(record: JobRecord | None) -> bool:
    return record is None or record.status not in TERMINAL


async def settle(
    store: JobStore, job_ids: list[str], *, scenario: str, load: str, timeout: float = 60
) -> Outcome:
    began = time.monotonic()

    async def read() -> list[JobRecord | None]:
        return [await store.get(job_id) for job_id in job_ids]

    try:
        records = await wait_until(
            read,
            lambda records: not any(_unfinished(r) for r in records),
            timeout=timeout,
            what=f"{len(job_ids)} jobs finished ({scenario})",
        )
    except AssertionError:
        records = await read()  # past the deadline: the outcome counts what never finished
    duplicated = 0
    unfinished: list[str] = []
    for job_id, record in zip(job_ids, records, strict=True):
        events = [JobEvent.model_validate_json(data) for _, data in await store.events(job_id)]
        if sum(1 for e in events if e.event == "completed") > 1:
            duplicated += 1
        if record is None or record.status != JobStatus.COMPLETED:
            trail = ", ".join(f"{e.event}#{e.attempt}" for e in events)
            status = record.status if record else "missing"
            unfinished.append(f"{job_id}: {status}; events: {trail or 'none'}")
    outcome = Outcome(
        scenario=scenario,
        load=load,
        accepted=len(job_ids),
        completed=sum(1 for r in records if r and r.status == JobStatus.COMPLETED),
        failed=sum(1 for r in records if r and r.status == JobStatus.FAILED),
        lost=sum(1 for r in records if r is None or r.status not in TERMINAL),
        duplicated=duplicated,
        seconds=round(time.monotonic() - began, 2),
        unfinished=tuple(unfinished),
    )
    RESULTS.append(asdict(outcome))
    return outcome


def table() -> str:
    lines = [
        "| scenario | load | accepted | completed | failed | lost | duplicated |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in RESULTS:
        lines.append(
            f"| {row['scenario']} | {row['load']} | {row['accepted']} | {row['completed']} "
            f"| {row['failed']} | {row['lost']} | {row['duplicated']} |"
        )
    return "\n".join(lines)


def dump() -> str:
    return json.dumps(RESULTS, indent=2)
