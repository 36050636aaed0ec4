"""Playing the gateway for a worker under test: record a job, publish it, watch it.

    rig = JobRig(rabbitmq_url=..., redis_url=..., redis_prefix=..., name="ai-test")
    await rig.open()
    request = await rig.submit_request(AiGenerateRequest(...), routing_key="ai.generate")
    record = await rig.wait_status(request.id)  # completed, failed or cancelled
    await rig.close()

The rigs of the worker tests (`Harness`, `ServiceDriver`, `VideoRig`) are this
one with a way to build their requests and start their worker; a test reads the
job's state and events from the same store the worker writes.
"""

from collections.abc import Iterable
from typing import TypeVar

from offload_contracts import TERMINAL_STATUSES, JobEvent, JobRequestBase, JobStatus, topology
from offload_runtime.broker import make_broker, publish_confirmed
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobRecord, JobStore
from tests.support.waiting import wait_until

Request = TypeVar("Request", bound=JobRequestBase)


async def wait_for_status(
    store: JobStore, job_id: str, statuses: Iterable[JobStatus], timeout: float
) -> JobRecord:
    """Poll the store until the job is in one of `statuses`; fail with what was last seen."""
    wanted = set(statuses)
    found = await wait_until(
        lambda: store.get(job_id),
        lambda record: record is not None and record.status in wanted,
        timeout=timeout,
        what=f"job {job_id} in {wanted}",
        interval=0.01,
    )
    assert found is not None
    return found


async def job_events(store: JobStore, job_id: str) -> list[JobEvent]:
    """The job's events, in order, from its stream."""
    return [JobEvent.model_validate_json(data) for _, data in await store.events(job_id)]


class JobRig:
    """A job store under its own Redis prefix, and a broker link to submit jobs with."""

    wait_timeout: float = 15
    """How long `wait_status` waits unless told (a rig whose worker is slower says more)."""

    def __init__(
        self,
        *,
        rabbitmq_url: str,
        redis_url: str,
        redis_prefix: str,
        name: str,
        events_maxlen: int = 1000,
    ) -> None:
        self.keys = RedisKeys(redis_prefix)
        self.redis = connect_redis(redis_url)
        self.store = JobStore(self.redis, self.keys, retention_s=3600, events_maxlen=events_maxlen)
        self.broker = make_broker(rabbitmq_url, service=name)

    async def open(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        await self.broker.stop()
        await self.redis.aclose()

    async def submit_request(self, request: Request, *, routing_key: str) -> Request:
        """What the gateway does: record the job `waiting`, then publish it with a confirm.

        `routing_key` is the job's type, or `<service>.job` for a probe service.
        """
        created = await self.store.create(request)
        assert created.applied
        await publish_confirmed(
            self.broker,
            request.model_dump_json().encode(),
            exchange=topology.JOBS_EXCHANGE,
            routing_key=routing_key,
        )
        return request

    async def wait_status(
        self,
        job_id: str,
        statuses: Iterable[JobStatus] = TERMINAL_STATUSES,
        timeout: float | None = None,
    ) -> JobRecord:
        """Wait until the job is in one of `statuses` (by default: finished)."""
        return await wait_for_status(self.store, job_id, statuses, timeout or self.wait_timeout)

    async def wait_all(
        self, job_ids: Iterable[str], statuses: Iterable[JobStatus], timeout: float = 30
    ) -> list[JobRecord]:
        """Wait until every job is in one of `statuses`; their records, in the same order."""
        wanted = set(statuses)
        ids = list(job_ids)

        async def records() -> list[JobRecord | None]:
            return [await self.store.get(job_id) for job_id in ids]

        def behind(found: list[JobRecord | None]) -> list[tuple[str, JobStatus | None]]:
            return [
                (job_id, record.status if record else None)
                for job_id, record in zip(ids, found, strict=True)
                if record is None or record.status not in wanted
            ]

        found = await wait_until(
            records,
            lambda found: not behind(found),
            timeout=timeout,
            what=f"{len(ids)} jobs in {wanted}",
            describe=lambda found: f"{len(behind(found))} behind: {behind(found)[:10]}",
        )
        return [record for record in found if record is not None]

    async def events(self, job_id: str) -> list[JobEvent]:
        return await job_events(self.store, job_id)
