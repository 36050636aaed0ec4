"""Two notifier processes (`python -m offload_notifier`) sharing one outbox, one of them killed.

What a deployment with replicas relies on: any replica serves any job's
stream, a client whose replica died resumes on another with `Last-Event-ID`
and misses nothing, and the events the dead replica had taken are relayed by
the survivor.
"""

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.infra import Infra
from tests.support.notifier import (
    SSE,
    NotifierSpace,
    Receiver,
    notifier_processes,
    notifier_space,
    serve,
    sse,
    until,
    verify,
)

REPLICA = {
    "relay_claim_idle_ms": 300,
    "relay_block_ms": 100,
    "sse_ping_s": 0.5,
}


@pytest.fixture
async def space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    async with notifier_space(infra) as space:
        yield space


async def test_a_job_stream_survives_its_notifier_being_killed(space: NotifierSpace) -> None:
    hooks = Receiver()
    async with (
        serve(hooks.app) as hooks_url,
        notifier_processes(space, 2, **REPLICA) as (one, two),
        httpx.AsyncClient(base_url=one.base_url, headers=space.headers(), timeout=10) as via_one,
        httpx.AsyncClient(base_url=two.base_url, headers=space.headers(), timeout=10) as via_two,
    ):
        job = await space.jobs.create(webhook={"url": f"{hooks_url}/done"})
        await space.jobs.start(job)
        async with (
            sse(via_one, f"/v1/jobs/{job.id}/events") as on_one,
            sse(via_two, f"/v1/jobs/{job.id}/events") as on_two,
        ):
            before = await on_one.events(2)
            assert [e.event for e in before] == ["queued", "started"]
            assert [(e.id, e.data) for e in await on_two.events(2)] == [
                (e.id, e.data) for e in before
            ]
            await space.jobs.progress(job, 25)
            before += await on_one.events(1)

            one.kill()  # no shutdown: its connections drop, its pending entries stay
            with pytest.raises(httpx.HTTPError):
                await on_one.rest()
            await space.jobs.progress(job, 75)
            await space.jobs.complete(job)
            seen_on_two = await on_two.rest()

        # The client of the dead replica reconnects to the other one and resumes.
        async with sse(via_two, f"/v1/jobs/{job.id}/events", last_event_id=before[-1].id) as again:
            after = await again.rest()

        [delivered] = await hooks.wait_for("done", 1)
        await until(lambda: _tenant_has_every_event(space, job.id), what="the tenant stream")

    stored = await space.redis.xrange(space.keys.job_events(job.id))
    expected = [(entry_id, fields["data"]) for entry_id, fields in stored]
    assert _pairs(before + after) == expected  # no gap, no duplicate across replicas
    assert _pairs([*before[:2], *seen_on_two]) == expected
    assert [e.event for e in after] == ["progress", "completed"]
    body = verify(delivered, await space.secrets())
    assert body["type"] == "note.job.completed" and body["data"]["job_id"] == job.id


def _pairs(events: list[SSE]) -> list[tuple[str | None, str | None]]:
    return [(e.id, e.data) for e in events]


async def _tenant_has_every_event(space: NotifierSpace, job_id: str) -> bool:
    job_events = await space.redis.xrange(space.keys.job_events(job_id))
    wanted = {json.loads(fields["data"])["event_id"] for _, fields in job_events}
    tenant = await space.redis.xrange(space.keys.tenant_events("acme", space.keys.shard(job_id)))
    return wanted <= {json.loads(fields["data"])["event_id"] for _, fields in tenant}
