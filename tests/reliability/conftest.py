from collections.abc import AsyncIterator, Iterator

import pytest

from offload_contracts import EventKind, JobStatus
from tests.support.dedicated import DedicatedRabbit
from tests.support.harness import Harness
from tests.support.infra import Infra


@pytest.fixture(scope="session")
def rabbit() -> Iterator[DedicatedRabbit]:
    """A RabbitMQ node of this run's own, which tests may stop and start."""
    node = DedicatedRabbit()
    node.start()
    yield node
    node.shutdown()


@pytest.fixture
async def harness(infra: Infra) -> AsyncIterator[Harness]:
    h = Harness(infra, concurrency=10, shutdown_grace_s=5)
    await h.open()
    yield h
    await h.close()


async def assert_each_completed_exactly_once(harness: Harness, job_ids: list[str]) -> None:
    """Every job `completed`, with exactly one `completed` event; none left `active`."""
    records = await harness.wait_all(job_ids, {JobStatus.COMPLETED, JobStatus.FAILED}, timeout=60)
    assert [r.id for r in records if r.status != JobStatus.COMPLETED] == []
    for job_id in job_ids:
        kinds = [e.event for e in await harness.events(job_id)]
        assert kinds.count(EventKind.COMPLETED) == 1, (job_id, kinds)
