"""The admin API over real HTTP: queues, dead letters (browse, replay, purge), jobs, live events.

A real gateway and a real `ai` worker (the runtime's runner, a stand-in job
function) in a vhost of their own; an operator finds a failed job, reads why
it failed, and replays it, as DESIGN §2 and issue 11 ask.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from offload_contracts import BUILTIN_SPECS, topology
from offload_runtime.worker import Worker
from tests.support.gateway import RunningGateway, assert_problem, running_gateway
from tests.support.infra import Infra, Rabbitmqctl
from tests.support.ops import ADMIN_KEY, StubAi, admin_client
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def gateway_infra(ops_infra: Infra) -> Infra:
    return ops_infra


@pytest.fixture(scope="module")
async def stub() -> StubAi:
    return StubAi()


@pytest.fixture(scope="module")
async def worker(ops_infra: Infra, gateway: RunningGateway, stub: StubAi) -> AsyncIterator[Worker]:
    running = await stub.start(ops_infra, gateway.settings.redis_prefix)
    yield running
    await running.app.stop()


@pytest.fixture
async def admin(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(gateway.base_url) as http:
        yield http


async def wait_status(
    gateway: RunningGateway, job_id: str, status: str, tenant: str = "acme", timeout: float = 10
) -> dict[str, Any]:
    async with gateway.client(tenant) as http:

        async def get() -> dict[str, Any]:
            job: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
            return job

        return await wait_until(
            get,
            lambda job: job["status"] == status,
            timeout=timeout,
            what=f"job {job_id} {status}",
            interval=0.02,
        )


async def dead_depth(admin: httpx.AsyncClient, queue: str = "ai.dead") -> int:
    answer = await admin.get(f"/v1/admin/dead-letters/{queue}", params={"limit": 1})
    assert answer.status_code == 200, answer.text
    total: int = answer.json()["total"]
    return total


async def wait_dead_depth(admin: httpx.AsyncClient, expected: int, timeout: float = 10) -> None:
    await wait_until(
        lambda: dead_depth(admin),
        lambda depth: depth == expected,
        timeout=timeout,
        what=f"ai.dead holding {expected}",
    )


# ---------------------------------------------------------------------- auth


async def test_admin_routes_need_an_admin_key(gateway: RunningGateway) -> None:
    async with gateway.client(None) as anonymous:
        body = assert_problem(await anonymous.get("/v1/admin/queues"), 401)
        assert "admin key" in body["detail"]
        wrong = await anonymous.get(
            "/v1/admin/queues", headers={"Authorization": "Bearer not-a-key"}
        )
        assert_problem(wrong, 401)
    async with gateway.client("acme") as tenant:
        for method, path in [
            ("GET", "/v1/admin/queues"),
            ("GET", "/v1/admin/dead-letters/ai.dead"),
            ("POST", "/v1/admin/dead-letters/ai.dead/replay"),
            ("DELETE", "/v1/admin/dead-letters/ai.dead?confirm=ai.dead"),
            ("GET", "/v1/admin/jobs"),
            ("GET", "/v1/admin/events"),
        ]:
            answer = await tenant.request(method, path, json={"all": True})
            body = assert_problem(answer, 403)
            assert "admin key" in body["detail"], (method, path)


# ---------------------------------------------------------------------- queues


async def test_queues_show_depth_consumers_and_dead_letters(
    gateway: RunningGateway, worker: Worker, stub: StubAi, admin: httpx.AsyncClient
) -> None:
    stub.failing.add("queues: refuse me")
    before = await dead_depth(admin)
    job_id = await gateway.submit("ai.generate", {"prompt": "queues: refuse me"})
    await wait_status(gateway, job_id, "failed")
    await wait_dead_depth(admin, before + 1)

    answer = await admin.get("/v1/admin/queues")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    queues = {queue["name"]: queue for queue in view["queues"]}
    for service in topology.WORKER_SERVICES:
        assert {f"{service}.jobs", f"{service}.retry.50ms", f"{service}.retry.100ms"} <= set(queues)
        assert queues[f"{service}.dead"]["kind"] == "dead"
    assert queues["ai.jobs"]["exists"] is True
    assert queues["ai.jobs"]["consumers"] == 1  # the stub worker
    assert queues["image.jobs"]["consumers"] == 0
    assert queues["ai.dead"]["ready"] == before + 1
    assert view["dead_letters"] >= before + 1
    # Nothing declares the notifier's queues here: reported missing, not an error.
    assert queues["notifier.dead"]["exists"] is False and queues["notifier.dead"]["ready"] is None
    # Unacked: 0 where nothing consumes; the worker's report where it does; null for
    # a missing queue. (The held deliveries: see the test below.)
    assert queues["image.jobs"]["unacked"] == 0 and queues["ai.dead"]["unacked"] == 0
    assert queues["ai.jobs"]["unacked"] == 0
    assert queues["notifier.dead"]["unacked"] is None
    assert "consuming workers and notifiers" in view["unacked_note"]

    async with gateway.client(None) as http:
        scraped = (await http.get("/metrics")).text
    assert f'offload_queue_messages{{kind="dead",queue="ai.dead",service="ai"}} {before + 1}.0' in (
        scraped
    )
    assert 'offload_queue_consumers{kind="work",queue="ai.jobs",service="ai"} 1.0' in scraped
    assert "offload_event_loop_lag_seconds_count" in scraped


async def test_a_work_queue_with_messages_and_no_consumer_shows_stalled(
    gateway: RunningGateway, worker: Worker, admin: httpx.AsyncClient
) -> None:
    # No video worker runs here: its job waits with nothing to run it.
    async with gateway.client("acme") as http:
        answer = await http.post(
            "/v1/jobs",
            json={
                "type": "video.generate",
                "input": {"prompt": "a stall", "duration_s": 2, "resolution": "480p"},
            },
        )
    assert answer.status_code == 202, answer.text

    async def video_jobs() -> dict[str, Any]:
        view = (await admin.get("/v1/admin/queues")).json()
        return {q["name"]: q for q in view["queues"]}

    queues = await wait_until(
        video_jobs,
        lambda queues: queues["video.jobs"]["ready"],
        timeout=10,
        what="a message ready in video.jobs",
        interval=0.1,
        describe=lambda queues: repr(queues["video.jobs"]),
    )
    assert queues["video.jobs"]["consumers"] == 0 and queues["video.jobs"]["stalled"] is True
    assert queues["ai.jobs"]["consumers"] == 1 and queues["ai.jobs"]["stalled"] is False
    assert queues["video.dead"]["stalled"] is False  # only work queues stall
    async with gateway.client(None) as http:
        scraped = (await http.get("/metrics")).text
    assert 'offload_queue_stalled{queue="video.jobs",service="video"} 1.0' in scraped
    assert 'offload_queue_stalled{queue="ai.jobs",service="ai"} 0.0' in scraped


async def test_queues_show_the_deliveries_a_worker_holds_unacked(
    gateway: RunningGateway, worker: Worker, stub: StubAi, admin: httpx.AsyncClient
) -> None:
    async def ai_jobs() -> dict[str, Any]:
        view = (await admin.get("/v1/admin/queues")).json()
        queue: dict[str, Any] = next(q for q in view["queues"] if q["name"] == "ai.jobs")
        return queue

    async def until_unacked(expected: int) -> None:
        await wait_until(
            ai_jobs,
            lambda queue: queue["unacked"] == expected,
            timeout=10,
            what=f"{expected} unacked in ai.jobs",
            interval=0.1,
        )

    stub.gate.clear()
    ids = [await gateway.submit("ai.generate", {"prompt": f"hold: {n}"}) for n in range(3)]
    try:
        await until_unacked(3)  # the worker holds all three, running (concurrency 4)
        assert (await ai_jobs())["ready"] == 0
    finally:
        stub.gate.set()
    for job_id in ids:
        await wait_status(gateway, job_id, "completed")
    await until_unacked(0)
    async with gateway.client(None) as http:
        scraped = (await http.get("/metrics")).text
    assert 'offload_queue_unacked{kind="work",queue="ai.jobs",service="ai"} 0.0' in scraped


async def test_queues_are_read_on_the_gateways_one_connection_leaving_no_channel_open(
    ops_infra: Infra, gateway: RunningGateway, admin: httpx.AsyncClient
) -> None:
    def gateway_channels() -> int:
        """The channels of the gateway's connection; there must be only that one."""
        # `list_connections` lists every vhost's (it takes no `-p`): other test runs
        # on this broker have gateways too, so keep this run's vhost only.
        listed = Rabbitmqctl()("list_connections", "vhost", "client_properties", "channels", "-q")
        named = [
            (match.group(1), int(line.rsplit("\t", 1)[1]))
            for line in listed.splitlines()
            if line.split("\t", 1)[0] == ops_infra.vhost
            and (match := re.search(r'"connection_name","([^"]*)"', line))
        ]
        gateways = [channels for name, channels in named if name.startswith("offload-gateway")]
        assert len(gateways) == 1, named
        return gateways[0]

    before = await asyncio.to_thread(gateway_channels)
    for _ in range(5):
        # Nothing declares the notifier's queues here: every read meets four missing
        # queues, and a missing queue's passive declare closes its channel.
        answer = await admin.get("/v1/admin/queues")
        assert answer.status_code == 200
        assert await dead_depth(admin, "ai.dead") >= 0
    after = await asyncio.to_thread(gateway_channels)
    # At most the broker link's own depth read may hold a channel at that moment.
    assert after <= before + 1, (before, after)


# ---------------------------------------------------------------------- dead letters


async def test_an_operator_finds_a_failed_job_reads_why_and_replays_it(
    gateway: RunningGateway, worker: Worker, stub: StubAi, admin: httpx.AsyncClient
) -> None:
    await admin.delete("/v1/admin/dead-letters/ai.dead", params={"confirm": "ai.dead"})
    prompts = ["replay: one", "replay: two", "replay: three"]
    stub.failing.update(prompts)
    ids = [
        await gateway.submit("ai.generate", {"prompt": prompt}, tenant)
        for prompt, tenant in zip(prompts, ["acme", "globex", "acme"], strict=True)
    ]
    for job_id, tenant in zip(ids, ["acme", "globex", "acme"], strict=True):
        await wait_status(gateway, job_id, "failed", tenant)
    await wait_dead_depth(admin, 3)

    # Read the dead queue, two at a time; reading consumes nothing.
    first = (await admin.get("/v1/admin/dead-letters/ai.dead", params={"limit": 2})).json()
    assert first["total"] == 3 and first["next_offset"] == 2
    second = (
        await admin.get("/v1/admin/dead-letters/ai.dead", params={"limit": 2, "offset": 2})
    ).json()
    assert second["next_offset"] is None
    letters = first["items"] + second["items"]
    assert [letter["job_id"] for letter in letters] == ids  # oldest first, order kept
    letter = letters[1]
    assert letter["type"] == "ai.generate" and letter["tenant"] == "globex"
    assert letter["reason"] == "failed" and letter["error_type"] == "permanent"
    assert "refused the prompt 'replay: two'" in letter["error"]
    assert letter["attempts"] == 1 and letter["source_queue"] == "ai.jobs"
    assert letter["failed_at"] and letter["valid_json"] is True
    again = (await admin.get("/v1/admin/dead-letters/ai.dead", params={"limit": 3})).json()
    assert [item["job_id"] for item in again["items"]] == ids
    assert again["total"] == 3

    # The job's timeline says why too.
    detail = (await admin.get(f"/v1/admin/jobs/{ids[1]}")).json()
    assert detail["job"]["status"] == "failed" and detail["job"]["tenant"] == "globex"
    assert [e["event"]["event"] for e in detail["events"]] == [
        "queued",
        "started",
        "progress",
        "failed",
    ]
    assert "refused" in detail["events"][-1]["event"]["error"]["message"]

    # Fix the cause for job two, replay it alone.
    stub.failing.discard("replay: two")
    answer = await admin.post(
        "/v1/admin/dead-letters/ai.dead/replay", json={"job_ids": [ids[1], "no-such-job"]}
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["replayed"] == [ids[1]]
    assert report["not_found"] == ["no-such-job"]
    assert report["remaining"] == 2
    job = await wait_status(gateway, ids[1], "completed", "globex")
    assert job["attempt"] == 1 and job["result"]["text"] == "echo: replay: two"
    timeline = (await admin.get(f"/v1/admin/jobs/{ids[1]}")).json()["events"]
    assert [e["event"]["event"] for e in timeline][3:] == [
        "failed",
        "queued",
        "started",
        "progress",
        "completed",
    ]
    remaining = (await admin.get("/v1/admin/dead-letters/ai.dead")).json()["items"]
    assert [item["job_id"] for item in remaining] == [ids[0], ids[2]]

    # The audit says who replayed what (a hash of the key, never the key).
    audit = (await admin.get("/v1/admin/audit", params={"limit": 1})).json()[0]
    assert audit["id"] == report["audit_id"]
    assert audit["action"] == "replay" and audit["queue"] == "ai.dead"
    assert audit["actor"].startswith("admin:") and ADMIN_KEY not in json.dumps(audit)
    assert audit["detail"]["replayed"] == [ids[1]]

    # Replay all: job one works now, job three still fails and comes back.
    stub.failing.discard("replay: one")
    answer = await admin.post("/v1/admin/dead-letters/ai.dead/replay", json={"all": True})
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["replayed"]) == sorted([ids[0], ids[2]])
    await wait_status(gateway, ids[0], "completed")
    third = await wait_status(gateway, ids[2], "failed")
    assert third["attempt"] == 1
    await wait_dead_depth(admin, 1)


async def test_letters_that_cannot_be_replayed_stay_with_the_reason(
    gateway: RunningGateway, ops_infra: Infra, worker: Worker, admin: httpx.AsyncClient
) -> None:
    await admin.delete("/v1/admin/dead-letters/ai.dead", params={"confirm": "ai.dead"})
    connection = await aio_pika.connect(ops_infra.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.DEAD_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"not json at all"), routing_key="ai")
    await wait_dead_depth(admin, 1)

    listed = (await admin.get("/v1/admin/dead-letters/ai.dead")).json()["items"]
    assert listed[0]["valid_json"] is False and listed[0]["job_id"] is None
    answer = await admin.post("/v1/admin/dead-letters/ai.dead/replay", json={"all": True})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["replayed"] == []
    assert report["skipped"] == [
        {"job_id": None, "reason": "not a valid job request: purge it or fix it by hand"}
    ]
    assert report["remaining"] == 1


async def test_bad_replay_and_purge_requests_are_refused_and_change_nothing(
    gateway: RunningGateway, worker: Worker, stub: StubAi, admin: httpx.AsyncClient
) -> None:
    stub.failing.add("refused: keep me")
    job_id = await gateway.submit("ai.generate", {"prompt": "refused: keep me"})
    await wait_status(gateway, job_id, "failed")
    depth = await dead_depth(admin)
    assert depth >= 1

    for body in ({}, {"all": True, "job_ids": [job_id]}, {"job_ids": []}, {"all": False}):
        assert_problem(await admin.post("/v1/admin/dead-letters/ai.dead/replay", json=body), 422)
    assert_problem(
        await admin.post("/v1/admin/dead-letters/ai.jobs/replay", json={"all": True}), 404
    )
    assert_problem(await admin.get("/v1/admin/dead-letters/nope.dead"), 404)
    assert_problem(await admin.get("/v1/admin/dead-letters/ai.dead", params={"limit": 0}), 422)
    body = assert_problem(await admin.delete("/v1/admin/dead-letters/ai.dead"), 400)
    assert "confirm=ai.dead" in body["detail"]
    assert_problem(
        await admin.delete("/v1/admin/dead-letters/ai.dead", params={"confirm": "image.dead"}), 400
    )
    assert await dead_depth(admin) == depth

    purged = await admin.delete("/v1/admin/dead-letters/ai.dead", params={"confirm": "ai.dead"})
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] == depth
    assert await dead_depth(admin) == 0
    audit = (await admin.get("/v1/admin/audit", params={"limit": 1})).json()[0]
    assert audit["action"] == "purge" and audit["detail"] == {"purged": depth}


async def test_replays_and_purges_are_rate_limited_per_admin_key(ops_infra: Infra) -> None:
    async with (
        running_gateway(ops_infra, admin_keys=ADMIN_KEY) as gw,
        admin_client(gw.base_url) as admin,
    ):
        # 10 a minute by default, in windows of the clock's minutes: calls until the
        # first 429 are 10, or up to 20 when a minute ends during the loop.
        statuses = []
        for _ in range(21):
            answer = await admin.post(
                "/v1/admin/dead-letters/ai.dead/replay", json={"job_ids": ["absent"]}
            )
            statuses.append(answer.status_code)
            if answer.status_code != 200:
                break
        assert set(statuses[:-1]) == {200} and 10 <= len(statuses) - 1 <= 20, statuses
        body = assert_problem(answer, 429)
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        assert "10 replay or purge calls a minute" in body["detail"]


# ---------------------------------------------------------------------- jobs and events


async def test_admin_sees_every_tenants_jobs_and_live_events(
    gateway: RunningGateway, worker: Worker, admin: httpx.AsyncClient
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    snapshot_seen = asyncio.Event()

    async def listen() -> None:
        async with admin.stream("GET", "/v1/admin/events", params={"snapshot": 20}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in answer.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line.split(":", 1)[1])))
                    if kind == "snapshot":
                        snapshot_seen.set()

    listener = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(snapshot_seen.wait(), 10)
        acme = await gateway.submit("ai.generate", {"prompt": "live: acme"})
        globex = await gateway.submit("ai.generate", {"prompt": "live: globex"}, "globex")

        async def seen() -> list[tuple[str, dict[str, Any]]]:
            return events

        await wait_until(
            seen,
            lambda events: (
                {(e["job_id"], e["event"]) for kind, e in events if kind == "job"}
                >= {(acme, "completed"), (globex, "completed")}
            ),
            timeout=10,
            what="both jobs completed on the admin stream",
            interval=0.02,
            describe=lambda events: repr(events[-5:]),
        )
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    mine = [e["event"] for kind, e in events if kind == "job" and e["job_id"] == acme]
    assert mine == ["queued", "started", "progress", "completed"]

    listed = (await admin.get("/v1/admin/jobs", params={"limit": 5})).json()
    by_id = {job["id"]: job for job in listed["jobs"]}
    assert by_id[acme]["tenant"] == "acme" and by_id[globex]["tenant"] == "globex"
    assert by_id[acme]["status"] == "completed"
    assert listed["tenants"] == ["acme", "globex"]
    assert sum(listed["counts"].values()) == len(listed["jobs"])


async def test_a_last_event_id_redis_would_refuse_starts_the_admin_stream_afresh(
    gateway: RunningGateway, admin: httpx.AsyncClient
) -> None:
    await gateway.submit("ai.generate", {"prompt": "so that the outbox is not empty"})
    for last_event_id in ("1-99999999999999999999", "18446744073709551616-0"):
        headers = {"Last-Event-ID": last_event_id}
        async with admin.stream(
            "GET", "/v1/admin/events", params={"snapshot": 1}, headers=headers
        ) as answer:
            assert answer.status_code == 200
            lines = answer.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)
        # As with no id at all: a snapshot first (an id Redis refuses would end the stream).
        assert first == "event: snapshot", (last_event_id, first)


async def test_asyncapi_documents_and_dashboard_are_served(gateway: RunningGateway) -> None:
    async with gateway.client(None) as http:
        gateway_doc = (await http.get("/asyncapi/gateway")).json()
        assert gateway_doc["asyncapi"] == "3.0.0"
        assert set(gateway_doc["channels"]) == {
            f"jobs:{spec.type}:publish" for spec in BUILTIN_SPECS
        }
        image_doc = (await http.get("/asyncapi/image")).json()
        assert "image.jobs:consume" in image_doc["channels"]
        assert "ImageProcessRequest" in image_doc["components"]["schemas"]
        assert_problem(await http.get("/asyncapi/nope"), 404)
        page = await http.get("/dashboard")
        assert page.status_code == 200 and "Offload operations" in page.text
        script = await http.get("/dashboard/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert_problem(await http.get("/dashboard/../app.py"), 404)
