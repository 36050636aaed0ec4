"""Parked webhook deliveries (`notifier.dead`) through the admin API, over real HTTP.

A real gateway, a real `ai` worker (the runtime's runner, a stand-in job
function) and a real notifier, sharing one Redis prefix, in a vhost of their
own. A job's webhook points at a port where nothing listens yet: the notifier
tries twice (a 50 ms tier), then parks the delivery in `notifier.dead`. An
operator reads it through the admin API, starts the receiver, and replays it.
"""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from offload_contracts import topology
from offload_runtime.webhook_secrets import WebhookSecrets
from offload_runtime.worker import Worker
from tests.support.gateway import RunningGateway, assert_problem
from tests.support.infra import Infra
from tests.support.notifier import (
    Receiver,
    RunningNotifier,
    free_port,
    serve,
    verify,
)
from tests.support.ops import ADMIN_KEY, StubAi, admin_client, deployed_notifier
from tests.support.waiting import wait_until

DEAD = topology.dead_queue(topology.NOTIFIER_SERVICE)


@pytest.fixture(scope="module")
def gateway_infra(ops_infra: Infra) -> Infra:
    return ops_infra


@pytest.fixture(scope="module")
async def worker(ops_infra: Infra, gateway: RunningGateway) -> AsyncIterator[Worker]:
    running = await StubAi().start(ops_infra, gateway.settings.redis_prefix)
    yield running
    await running.app.stop()


@pytest.fixture(scope="module")
async def notifier(ops_infra: Infra, gateway: RunningGateway) -> AsyncIterator[RunningNotifier]:
    """The deployed notifier's queue names, reading the gateway's outbox; two attempts."""
    async with deployed_notifier(
        ops_infra, gateway, retry_tiers="50ms", webhook_max_attempts=2
    ) as running:
        yield running


@pytest.fixture
async def admin(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(gateway.base_url) as http:
        yield http


async def dead_page(admin: httpx.AsyncClient) -> dict[str, Any]:
    answer = await admin.get(f"/v1/admin/dead-letters/{DEAD}")
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def test_a_parked_webhook_delivery_is_listed_then_replayed_to_the_receiver(
    gateway: RunningGateway,
    worker: Worker,
    notifier: RunningNotifier,
    admin: httpx.AsyncClient,
) -> None:
    await admin.delete(f"/v1/admin/dead-letters/{DEAD}", params={"confirm": DEAD})
    port = free_port()  # nothing listens here yet: every attempt is refused
    url = f"http://127.0.0.1:{port}/hooks/s3cret-path?token=s3cret-query"
    async with gateway.client("acme") as http:
        answer = await http.post(
            "/v1/jobs",
            json={"type": "ai.generate", "input": {"prompt": "hook"}, "webhook": {"url": url}},
        )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]

    # Two refused attempts, then the dead queue; the admin API lists it meaningfully.
    page = await wait_until(
        lambda: dead_page(admin),
        lambda page: page["total"] >= 1,
        timeout=15,
        what=f"the delivery of {job_id} to reach {DEAD}",
        interval=0.02,
    )
    [letter] = page["items"]
    assert letter["job_id"] == job_id
    assert letter["tenant"] == "acme" and letter["type"] == "ai.generate"
    assert letter["reason"] == "failed" and letter["error_type"] == "webhook_failed"
    assert "attempts exhausted: 2 of 2" in letter["error"]
    assert letter["attempts"] == 2 and letter["failed_at"]
    assert letter["source_queue"] == topology.work_queue(topology.NOTIFIER_SERVICE)
    webhook = letter["webhook"]
    assert webhook["event"] == "completed"
    assert webhook["url_origin"] == f"http://127.0.0.1:{port}"
    assert webhook["last_status"] is None  # no answer ever came
    assert "s3cret" not in json.dumps(page)  # neither the URL's path nor its query

    # The CLI says the same, for an operator at a terminal.
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "offload",
        "dead-letters",
        "list",
        topology.NOTIFIER_SERVICE,
        env={
            **os.environ,
            "OFFLOAD_URL": gateway.base_url,
            "OFFLOAD_API_KEY": gateway.api_keys["acme"],
            "OFFLOAD_ADMIN_KEY": ADMIN_KEY,
            "COLUMNS": "250",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, err.decode()
    assert f"webhook completed → http://127.0.0.1:{port}" in out.decode()
    assert job_id in out.decode() and b"s3cret" not in out

    queues = (await admin.get("/v1/admin/queues")).json()["queues"]
    [dead_queue] = [queue for queue in queues if queue["name"] == DEAD]
    assert dead_queue["exists"] is True and dead_queue["ready"] == 1

    # The notifier reports the deliveries it holds, like the workers: none now.
    async def notifier_jobs_unacked() -> bool:
        queues = (await admin.get("/v1/admin/queues")).json()["queues"]
        [jobs] = [q for q in queues if q["name"] == topology.work_queue("notifier")]
        return bool(jobs["consumers"] == 1 and jobs["unacked"] == 0)

    await wait_until(
        notifier_jobs_unacked, timeout=15, what="the notifier's unacked report", interval=0.02
    )

    # The receiver is up now: replay it by job id.
    hooks = Receiver()
    async with serve(hooks.app, port):
        answer = await admin.post(
            f"/v1/admin/dead-letters/{DEAD}/replay", json={"job_ids": [job_id, "no-such-job"]}
        )
        assert answer.status_code == 200, answer.text
        report = answer.json()
        [request] = await hooks.wait_for("hooks/s3cret-path", 1)
        await wait_until(
            lambda: _outcome(notifier, job_id, "delivered"),
            timeout=15,
            what="the delivery to be recorded",
            interval=0.02,
        )

    assert report["replayed"] == [job_id]
    assert report["webhook_ids"] == [webhook["webhook_id"]]
    assert report["skipped"] == [] and report["not_found"] == ["no-such-job"]
    assert report["remaining"] == 0
    # The same webhook-id as the parked attempts, signed with the tenant's secret.
    assert request.headers["webhook-id"] == webhook["webhook_id"]
    secrets = await WebhookSecrets(gateway.deps.redis, gateway.keys).signing("acme")
    body = verify(request, secrets)
    assert body["type"] == "ai.generate.completed" and body["data"]["job_id"] == job_id
    # Delivered at its first attempt after the replay: the count was reset.
    [record] = (await notifier.parts.deliveries.outcomes(job_id)).values()
    assert record["outcome"] == "delivered" and record["attempts"] == 1
    assert (await dead_page(admin))["total"] == 0

    audit = (await admin.get("/v1/admin/audit", params={"limit": 1})).json()[0]
    assert audit["id"] == report["audit_id"]
    assert audit["action"] == "replay" and audit["queue"] == DEAD
    assert audit["actor"].startswith("admin:") and ADMIN_KEY not in json.dumps(audit)
    assert audit["detail"]["replayed"] == [job_id]
    assert audit["detail"]["webhook_ids"] == [webhook["webhook_id"]]


async def test_bad_requests_and_letters_that_are_not_deliveries(
    ops_infra: Infra, notifier: RunningNotifier, admin: httpx.AsyncClient
) -> None:
    await admin.delete(f"/v1/admin/dead-letters/{DEAD}", params={"confirm": DEAD})
    body = assert_problem(await admin.get("/v1/admin/dead-letters/notifier.jobs"), 404)
    assert "no dead-letter queue named 'notifier.jobs'" in body["detail"]
    assert DEAD in body["detail"]  # the known queues are named
    assert_problem(
        await admin.post("/v1/admin/dead-letters/webhooks.dead/replay", json={"all": True}), 404
    )
    body = assert_problem(
        await admin.post(f"/v1/admin/dead-letters/{DEAD}/replay", json={"job_ids": ["../x"]}),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "job_ids", 0]
    assert "job_ids" in body["detail"]

    connection = await aio_pika.connect(ops_infra.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.DEAD_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(b'{"not": "a delivery"}'), routing_key=topology.NOTIFIER_SERVICE
        )
    page = await wait_until(
        lambda: dead_page(admin),
        lambda page: page["total"] >= 1,
        timeout=15,
        what=f"the letter to reach {DEAD}",
        interval=0.02,
    )
    [letter] = page["items"]
    assert letter["job_id"] is None and letter["webhook"] is None and letter["valid_json"]

    answer = await admin.post(f"/v1/admin/dead-letters/{DEAD}/replay", json={"all": True})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["replayed"] == [] and report["webhook_ids"] == []
    assert report["skipped"] == [
        {"job_id": None, "reason": "not a webhook delivery: purge it or fix it by hand"}
    ]
    assert report["remaining"] == 1

    assert_problem(await admin.delete(f"/v1/admin/dead-letters/{DEAD}"), 400)
    purged = await admin.delete(f"/v1/admin/dead-letters/{DEAD}", params={"confirm": DEAD})
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] == 1
    assert (await dead_page(admin))["total"] == 0
    audit = (await admin.get("/v1/admin/audit", params={"limit": 1})).json()[0]
    assert audit["action"] == "purge" and audit["queue"] == DEAD


async def _outcome(notifier: RunningNotifier, job_id: str, outcome: str) -> bool:
    records = await notifier.parts.deliveries.outcomes(job_id)
    return any(record["outcome"] == outcome for record in records.values())
