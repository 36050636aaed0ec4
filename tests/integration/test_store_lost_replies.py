"""A transition whose reply is lost is re-sent by the Redis client; it must count as done.

Redis can run a transition and die (or the link drop) before its reply gets
back. The client reconnects and sends the same call again, which now finds the
job already moved. Taken at face value that reads as "someone else moved it",
and the worker drops a job that it alone owns: it stays `active` for ever.
The proxy here loses exactly one reply, so each transition meets that case.
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from offload_contracts import EventKind, JobStatus
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore, new_id
from tests.support.harness import job_events
from tests.support.infra import Infra
from tests.support.lossy_proxy import LossyProxy, lossy_proxy
from tests.support.testjob import ProbeInput, ProbeRequest


@pytest.fixture
async def lossy(infra: Infra) -> AsyncIterator[tuple[JobStore, LossyProxy]]:
    target = urlsplit(infra.redis_url)
    async with lossy_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        client = connect_redis(f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}")
        keys = RedisKeys(f"{infra.redis_prefix}lost-replies-{new_id()[:8]}:")
        yield JobStore(client, keys, retention_s=600), proxy
        await client.aclose()


def _request() -> ProbeRequest:
    return ProbeRequest(
        id=new_id(),
        tenant="acme",
        max_attempts=3,
        created_at=datetime.now(UTC),
        input=ProbeInput(),
    )


async def test_a_create_whose_reply_was_lost_counts_as_created(
    lossy: tuple[JobStore, LossyProxy],
) -> None:
    store, proxy = lossy
    request = _request()

    proxy.drop_next_reply()
    created = await store.create(request)

    assert proxy.replies_dropped == 1
    assert created.applied
    assert [e.event for e in await job_events(store, request.id)] == [EventKind.QUEUED]


async def test_a_start_whose_reply_was_lost_still_belongs_to_its_worker(
    lossy: tuple[JobStore, LossyProxy],
) -> None:
    store, proxy = lossy
    request = _request()
    assert (await store.create(request)).applied
    run_id = new_id()

    proxy.drop_next_reply()
    started = await store.start(request, run_id, redelivered=False)

    assert proxy.replies_dropped == 1
    assert started.applied  # not "skipped": the job would stay `active` with nobody running it
    # ... and the worker that owns it can finish it.
    assert (await store.complete(request, run_id, {"ok": True})).applied
    record = await store.get(request.id)
    assert record is not None and record.status == JobStatus.COMPLETED
    assert [e.event for e in await job_events(store, request.id)] == [
        EventKind.QUEUED,
        EventKind.STARTED,
        EventKind.COMPLETED,
    ]


async def test_another_workers_start_is_still_refused(
    lossy: tuple[JobStore, LossyProxy],
) -> None:
    store, _ = lossy
    request = _request()
    assert (await store.create(request)).applied
    assert (await store.start(request, new_id(), redelivered=False)).applied

    again = await store.start(request, new_id(), redelivered=False)

    assert not again.applied
    assert again.previous_status == JobStatus.ACTIVE


async def test_a_complete_whose_reply_was_lost_counts_as_completed(
    lossy: tuple[JobStore, LossyProxy],
) -> None:
    store, proxy = lossy
    request = _request()
    assert (await store.create(request)).applied
    run_id = new_id()
    assert (await store.start(request, run_id, redelivered=False)).applied

    proxy.drop_next_reply()
    done = await store.complete(request, run_id, {"ok": True})

    assert proxy.replies_dropped == 1
    assert done.applied
    events = [e.event for e in await job_events(store, request.id)]
    assert events.count(EventKind.COMPLETED) == 1
