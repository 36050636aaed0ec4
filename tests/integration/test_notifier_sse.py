"""The notifier's SSE streams over real HTTP, against the real Redis and RabbitMQ (DESIGN §2)."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.infra import Infra
from tests.support.notifier import (
    SSE,
    NotifierSpace,
    RunningNotifier,
    notifier_space,
    running_notifier,
    sse,
    until,
)


@pytest.fixture
async def space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    async with notifier_space(infra) as space:
        yield space


@pytest.fixture
async def notifier(space: NotifierSpace) -> AsyncIterator[RunningNotifier]:
    async with running_notifier(space) as running:
        yield running


async def test_job_stream_sends_history_then_live_events_and_closes_after_the_terminal_one(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    async with notifier.client() as http, sse(http, f"/v1/jobs/{job.id}/events") as stream:
        history = await stream.events(2)
        assert [e.event for e in history] == ["queued", "started"]
        assert all(e.json["job_id"] == job.id for e in history)

        await space.jobs.progress(job, 50)
        [progress] = await stream.events(1)
        assert progress.event == "progress"
        assert progress.json["progress"] == {"percent": 50.0, "message": "50%"}

        await space.jobs.complete(job, answer=42)
        [completed] = await stream.events(1)
        assert completed.event == "completed"
        assert completed.json["result"] == {"answer": 42}
        assert await stream.rest() == []  # the server closed the stream

    stored = await space.redis.xrange(space.keys.job_events(job.id))
    assert [e.id for e in [*history, progress, completed]] == [entry_id for entry_id, _ in stored]


async def test_a_finished_job_streams_its_whole_history_and_closes(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    await space.jobs.complete(job)

    async with notifier.client() as http, sse(http, f"/v1/jobs/{job.id}/events") as stream:
        events = await stream.rest()

    assert [e.event for e in events] == ["queued", "started", "completed"]


async def test_reconnecting_with_last_event_id_resumes_with_no_gap_and_no_duplicate(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    async with notifier.client() as http:
        async with sse(http, f"/v1/jobs/{job.id}/events") as stream:
            seen = await stream.events(2)
            await space.jobs.progress(job, 10)
            seen += await stream.events(1)
        # Disconnected: events keep happening meanwhile.
        await space.jobs.progress(job, 20)
        await space.jobs.progress(job, 30)
        async with sse(http, f"/v1/jobs/{job.id}/events", last_event_id=seen[-1].id) as stream:
            resumed = await stream.events(2)
            await space.jobs.complete(job)
            resumed += await stream.rest()

    all_ids = [e.id for e in seen + resumed]
    stored = [entry_id for entry_id, _ in await space.redis.xrange(space.keys.job_events(job.id))]
    assert all_ids == stored
    assert [e.event for e in resumed] == ["progress", "progress", "completed"]


async def test_a_trimmed_last_event_id_gets_a_resync_with_the_current_state_first(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    await space.jobs.start(job)
    first = (await space.redis.xrange(space.keys.job_events(job.id)))[0][0]
    await space.jobs.progress(job, 40)
    # Trim the stream as its cap would: the first two entries are gone.
    await space.redis.xtrim(space.keys.job_events(job.id), maxlen=1, approximate=False)

    async with (
        notifier.client() as http,
        sse(http, f"/v1/jobs/{job.id}/events", last_event_id=first) as stream,
    ):
        [resync] = await stream.events(1)
        await space.jobs.complete(job)
        after = await stream.rest()

    assert resync.event == "resync"
    state = resync.json
    assert state["id"] == job.id and state["status"] == "active"
    assert state["progress"] == {"percent": 40.0, "message": "40%"}
    assert "tenant" not in state and "input" not in state
    assert [e.event for e in after] == ["completed"]
    stored = await space.redis.xrange(space.keys.job_events(job.id))
    assert resync.id == stored[-2][0]  # resumable: the id of the state it describes
    assert after[0].id == stored[-1][0]


async def test_another_tenants_job_is_404_and_no_key_is_401(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create(tenant="acme")
    async with notifier.client("globex") as http:
        other = await http.get(f"/v1/jobs/{job.id}/events")
        missing = await http.get("/v1/jobs/nope/events")
    async with notifier.client(None) as http:
        anonymous = await http.get(f"/v1/jobs/{job.id}/events")
    async with notifier.client(None, headers={"Authorization": "Bearer wrong"}) as http:
        wrong = await http.get("/v1/events")

    for answer in (other, missing):
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["status"] == 404
    assert other.json()["detail"] == missing.json()["detail"].replace("'nope'", repr(job.id))
    for answer in (anonymous, wrong):
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_a_long_job_id_is_not_echoed_back_whole(notifier: RunningNotifier) -> None:
    async with notifier.client() as http:
        answer = await http.get(f"/v1/jobs/{'j' * 10_000}/events")
    assert answer.status_code == 404
    problem = answer.json()
    assert problem["detail"] == f"no job {'j' * 80 + '…'!r} (10000 characters)"
    assert len(problem["instance"]) <= 201
    assert len(answer.content) < 1024


async def test_a_malformed_last_event_id_is_a_400(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    async with notifier.client() as http:
        answer = await http.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": "yesterday"})
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert "Last-Event-ID" in answer.json()["detail"]


@pytest.mark.parametrize(
    "last_event_id",
    ["1-99999999999999999999", "18446744073709551616-0", "\u0661-\u0660", "garbage", "$"],
)
async def test_a_last_event_id_redis_would_refuse_is_a_400_on_both_streams(
    space: NotifierSpace, notifier: RunningNotifier, last_event_id: str
) -> None:
    # Both streams hold entries older than the id's first part, so an id that got past
    # the check would be handed to Redis (which refuses it mid-stream, after a 200).
    job = await space.jobs.create()
    await space.jobs.start(job)
    tenant_stream = space.keys.tenant_events("acme", space.keys.shard(job.id))
    await until(lambda: space.redis.xlen(tenant_stream), what="the relay")
    async with notifier.client() as http:
        answers = [
            await http.get(path, params={"last_event_id": last_event_id})
            for path in (f"/v1/jobs/{job.id}/events", "/v1/events")
        ]
        if last_event_id.isascii():  # a header value is latin-1; the query takes any text
            answers += [
                await http.get(path, headers={"Last-Event-ID": last_event_id})
                for path in (f"/v1/jobs/{job.id}/events", "/v1/events")
            ]
    for answer in answers:
        assert answer.status_code == 400, (answer.request.url, answer.text[:200])
        assert answer.headers["content-type"] == "application/problem+json"
        assert "below 2^64" in answer.json()["detail"]


async def test_a_stream_that_fails_after_its_200_ends_cleanly_for_the_client_to_resume(
    space: NotifierSpace, notifier: RunningNotifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await space.jobs.create()

    async def redis_gone(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    for shard_hub in notifier.parts.hub.hubs:  # one reader per shard
        monkeypatch.setattr(shard_hub, "range_after", redis_gone)
    async with notifier.client() as http, sse(http, f"/v1/jobs/{job.id}/events") as stream:
        # The end of a well-formed stream (not a connection cut mid-chunk), so an
        # EventSource or the Offload client reconnects with its Last-Event-ID.
        assert await stream.rest() == []
    monkeypatch.undo()
    async with notifier.client() as http, sse(http, f"/v1/jobs/{job.id}/events") as stream:
        [queued] = await stream.events(1)
    assert queued.event == "queued"


async def test_a_tenant_at_its_stream_limit_gets_429_until_one_of_its_streams_ends(
    space: NotifierSpace,
) -> None:
    job = await space.jobs.create()
    paths = [f"/v1/jobs/{job.id}/events", "/v1/events", "/v1/events"]
    async with (
        running_notifier(space, sse_max_streams_per_tenant=3) as notifier,
        notifier.client() as http,
        notifier.client("globex") as other,
    ):
        slots = notifier.parts.slots
        async with AsyncExitStack() as held:
            streams = [await held.enter_async_context(sse(http, path)) for path in paths]
            refused = [await http.get(path) for path in paths[:2]]
            # Another tenant is not affected.
            async with sse(other, "/v1/events") as theirs:
                assert (await theirs.next()) == SSE(comment="subscribed")

            # A stream that ends by itself (after the job's terminal event) frees its slot.
            await space.jobs.start(job)
            await space.jobs.complete(job)
            assert [e.event for e in await streams[0].rest()] == ["queued", "started", "completed"]
            await until(lambda: slots.held("acme") == 2, what="the ended stream's slot")
            streams.append(await held.enter_async_context(sse(http, "/v1/events")))
            assert (await http.get("/v1/events")).status_code == 429
        # Streams the client closes free theirs.
        await until(lambda: slots.held("acme") == 0, what="the closed streams' slots")
        async with AsyncExitStack() as held:
            again = [await held.enter_async_context(sse(http, "/v1/events")) for _ in range(3)]
            assert [await s.next() for s in again] == [SSE(comment="subscribed")] * 3

    for answer in refused:
        assert answer.status_code == 429
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "5"
        assert "3 event streams open" in answer.json()["detail"]


async def test_pings_keep_an_idle_stream_alive(space: NotifierSpace) -> None:
    job = await space.jobs.create()
    async with (
        running_notifier(space, sse_ping_s=0.1) as notifier,
        notifier.client() as http,
        sse(http, f"/v1/jobs/{job.id}/events") as stream,
    ):
        [queued] = await stream.events(1)
        pings = [await stream.next(2), await stream.next(2)]
    assert queued.event == "queued"
    assert [p.comment if p else None for p in pings] == ["ping", "ping"]


async def test_tenant_stream_is_live_resumable_and_only_the_tenants(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    before = await space.jobs.create()  # before connecting: not part of a live stream
    tenant_stream = space.keys.tenant_events("acme", space.keys.shard(before.id))
    await until(lambda: space.redis.xlen(tenant_stream), what="the relay")
    async with notifier.client("acme") as http:
        async with sse(http, "/v1/events") as stream:
            subscribed = await stream.next()
            assert subscribed is not None and subscribed.comment == "subscribed"
            other = await space.jobs.create(tenant="globex")
            mine = await space.jobs.create(tenant="acme")
            await space.jobs.start(mine)
            live = await stream.events(2)
        await space.jobs.complete(mine)
        async with sse(http, "/v1/events", last_event_id=live[-1].id) as stream:
            [resumed] = await stream.events(1)

    assert [(e.json["job_id"], e.event) for e in live] == [
        (mine.id, "queued"),
        (mine.id, "started"),
    ]
    assert (resumed.json["job_id"], resumed.event) == (mine.id, "completed")
    assert other.id not in {e.json["job_id"] for e in live}
    assert before.id not in {e.json["job_id"] for e in live}


async def test_a_client_that_disconnects_releases_its_subscription(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    job = await space.jobs.create()
    hub = notifier.parts.hub
    async with notifier.client() as http:
        async with sse(http, f"/v1/jobs/{job.id}/events") as stream:
            await stream.events(1)
            await until(lambda: hub.keys_followed == 1, what="the subscription")
        # The client hung up mid-stream, the job still running.
        await until(lambda: hub.keys_followed == 0, what="the subscription to be released")
        async with sse(http, f"/v1/jobs/{job.id}/events") as stream:
            [queued] = await stream.events(1)
            await space.jobs.start(job)
            [started] = await stream.events(1)
    assert (queued.event, started.event) == ("queued", "started")


async def test_health_readiness_and_metrics(
    space: NotifierSpace, notifier: RunningNotifier
) -> None:
    async with notifier.client(None) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        metrics = await http.get("/metrics")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "broker": True,
        "redis": True,
        "relay": True,
        "streams": True,
        "webhooks": True,
    }
    assert metrics.status_code == 200
    for name in (
        "offload_webhook_deliveries_total",
        "offload_outbox_relayed_total",
        "offload_dead_letter_alerts_total",
        "offload_sse_clients",
    ):
        assert name in metrics.text
