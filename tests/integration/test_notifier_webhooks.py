"""Signed webhooks and dead-letter alerts, end to end through the real broker (DESIGN §6).

Every request the receiver gets is verified with `standardwebhooks`, the
reference implementation of the Standard Webhooks signature.
"""

import asyncio
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from offload_contracts import topology
from offload_runtime.webhook_secrets import WebhookSecrets
from tests.support.infra import Infra
from tests.support.notifier import (
    NotifierSpace,
    Receiver,
    RunningNotifier,
    free_port,
    notifier_space,
    running_notifier,
    serve,
    verify,
)
from tests.support.waiting import wait_until


@pytest.fixture
async def space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    async with notifier_space(infra) as space:
        yield space


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hooks = Receiver()
    async with serve(hooks.app) as base_url:
        yield hooks, base_url


async def _records(notifier: RunningNotifier, job_id: str) -> dict[str, dict[str, object]]:
    return await notifier.parts.deliveries.outcomes(job_id)


async def _take_all(infra: Infra, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=False)
        taken = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken
    finally:
        await connection.close()


async def test_the_terminal_event_is_delivered_signed_per_standard_webhooks(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    # One delivery at a time: had an earlier event been scheduled, it would arrive first.
    async with running_notifier(space, webhook_concurrency=1):
        job = await space.jobs.create(webhook={"url": f"{base}/job"})
        await space.jobs.start(job)
        await space.jobs.progress(job, 50)
        await space.jobs.complete(job, answer=42)
        [request] = await hooks.wait_for("job", 1)

    body = verify(request, await space.secrets())
    events = await space.redis.xrange(space.keys.job_events(job.id))
    completed = json.loads(events[-1][1]["data"])
    assert body == {"type": "note.job.completed", "timestamp": completed["at"], "data": completed}
    assert request.headers["webhook-id"] == completed["event_id"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):
        verify(request, ["whsec_" + "QUJD" * 8])  # another secret does not verify it


async def test_the_events_filter_chooses_which_events_are_sent(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    async with running_notifier(space, webhook_concurrency=1):
        job = await space.jobs.create(
            webhook={"url": f"{base}/filtered", "events": ["started", "completed"]}
        )
        await space.jobs.start(job)
        await space.jobs.progress(job, 50)
        await space.jobs.complete(job)
        received = await hooks.wait_for("filtered", 2)

    secrets = await space.secrets()
    assert [verify(r, secrets)["type"] for r in received] == [
        "note.job.started",
        "note.job.completed",
    ]


async def test_during_a_rotation_both_secrets_sign(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    old = await space.secrets()
    rotated = await WebhookSecrets(space.redis, space.keys).rotate("acme")
    assert rotated[1] == old[0]
    async with running_notifier(space):
        job = await space.jobs.create(webhook={"url": f"{base}/rotating"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        [request] = await hooks.wait_for("rotating", 1)

    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(request, [rotated[0]])  # the new secret verifies it
    verify(request, [old[0]])  # and so does the old one, during the grace period


async def test_a_receiver_failing_twice_gets_three_attempts_with_one_webhook_id(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("flaky", [500, 503])
    async with running_notifier(space, retry_tiers="50ms,100ms", webhook_max_attempts=5) as nt:
        job = await space.jobs.create(webhook={"url": f"{base}/flaky"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        attempts = await hooks.wait_for("flaky", 3)
        await wait_until(
            lambda: _delivered(nt, job.id),
            timeout=10,
            what="the delivery to be recorded",
            interval=0.02,
        )
        records = await _records(nt, job.id)

    secrets = await space.secrets()
    assert [verify(a, secrets)["type"] for a in attempts] == ["note.job.completed"] * 3
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1  # the same body on every attempt
    # Each retry waited in its tier: 50 ms after the first failure, 100 ms after the second.
    assert attempts[1].at - attempts[0].at >= 0.05
    assert attempts[2].at - attempts[1].at >= 0.1
    [record] = records.values()
    assert record["outcome"] == "delivered" and record["attempts"] == 3


async def _delivered(notifier: RunningNotifier, job_id: str) -> bool:
    records = await _records(notifier, job_id)
    return any(record["outcome"] == "delivered" for record in records.values())


async def test_retry_after_longer_than_every_tier_is_honoured(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("busy", [(429, {"Retry-After": "1"})])
    async with running_notifier(space, retry_tiers="50ms,100ms"):
        job = await space.jobs.create(webhook={"url": f"{base}/busy"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        first, second = await hooks.wait_for("busy", 2)

    assert second.at - first.at >= 1.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_a_receiver_down_for_a_while_gets_the_delivery_when_it_comes_back(
    space: NotifierSpace,
) -> None:
    port = free_port()  # nothing listens here yet: connection refused
    hooks = Receiver()
    async with running_notifier(
        space, retry_tiers="50ms,100ms,200ms", webhook_max_attempts=30
    ) as notifier:
        job = await space.jobs.create(webhook={"url": f"http://127.0.0.1:{port}/late"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        await wait_until(
            lambda: _outcome_is(notifier, job.id, "retried"),
            timeout=10,
            what="a failed first attempt",
            interval=0.02,
        )
        async with serve(hooks.app, port):
            [request] = await hooks.wait_for("late", 1)
            await wait_until(
                lambda: _delivered(notifier, job.id), timeout=10, what="the delivery", interval=0.02
            )
        [record] = (await _records(notifier, job.id)).values()

    assert verify(request, await space.secrets())["type"] == "note.job.completed"
    assert record["attempts"] > 1


async def _outcome_is(notifier: RunningNotifier, job_id: str, outcome: str) -> bool:
    records = await _records(notifier, job_id)
    return any(record["outcome"] == outcome for record in records.values())


async def test_a_private_url_is_refused_when_not_allowed_and_parked_with_an_alert(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    async with running_notifier(
        space, webhook_allow_private=False, ops_webhook_url=f"{base}/ops"
    ) as notifier:
        job = await space.jobs.create(webhook={"url": f"{base}/private"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        [alert] = await hooks.wait_for("ops", 1)
        # The alert (a copy of the dead letter) may arrive before the outcome is recorded.
        await wait_until(
            lambda: _outcome_is(notifier, job.id, "refused"),
            timeout=10,
            what="the record",
            interval=0.02,
        )
        [record] = (await _records(notifier, job.id)).values()

    assert hooks.at("private") == []  # no request was ever made
    assert record["outcome"] == "refused"
    assert "non-public address" in str(record["error"])
    assert alert.json["queue"] == f"{space.service}.dead"
    assert alert.json["reason"] == "refused"
    assert alert.json["job_id"] == job.id
    [dead] = await _take_all(space.infra, topology.dead_queue(space.service))
    assert json.loads(dead.body)["event"]["job_id"] == job.id
    assert dead.headers[topology.HEADER_ERROR_TYPE] == "refused"
    assert topology.HEADER_HTTP_STATUS not in dead.headers  # no HTTP answer was ever had


async def test_410_stops_deliveries_at_once(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("gone", [410, 410, 410])
    async with running_notifier(space) as notifier:
        job = await space.jobs.create(webhook={"url": f"{base}/gone"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        await wait_until(
            lambda: _outcome_is(notifier, job.id, "gone"),
            timeout=10,
            what="the 410 to be recorded",
            interval=0.02,
        )

    # Recorded as gone after one attempt: no retry was scheduled, nothing was parked.
    assert len(hooks.at("gone")) == 1
    [record] = (await _records(notifier, job.id)).values()
    assert record["attempts"] == 1 and record["status"] == 410
    assert await _take_all(space.infra, topology.dead_queue(space.service)) == []


async def test_a_redirect_is_not_followed_but_counted_as_a_failed_attempt(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("moved", [(307, {"Location": f"{base}/elsewhere"})])
    async with running_notifier(space) as notifier:
        job = await space.jobs.create(webhook={"url": f"{base}/moved"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        await hooks.wait_for("moved", 2)
        await wait_until(
            lambda: _delivered(notifier, job.id), timeout=10, what="the delivery", interval=0.02
        )

    assert hooks.at("elsewhere") == []


async def test_exhausted_attempts_park_the_delivery_and_alert_the_operations_webhook(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("down", [500] * 10)
    async with running_notifier(
        space,
        retry_tiers="50ms",
        webhook_max_attempts=2,
        ops_webhook_url=f"{base}/ops",
        ops_webhook_secret="whsec_" + "b3Bz" * 8,
    ):
        job = await space.jobs.create(webhook={"url": f"{base}/down"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        [alert] = await hooks.wait_for("ops", 1)

    assert len(hooks.at("down")) == 2
    body = verify(alert, ["whsec_" + "b3Bz" * 8])  # operations alerts are signed too
    assert body["type"] == "dead_letter"
    assert body["queue"] == f"{space.service}.dead"
    assert body["reason"] == "webhook_failed"
    assert body["job_id"] == job.id and body["attempt"] == 2
    assert "attempts exhausted: 2 of 2" in body["error"]
    # The dead letter itself stays in the dead queue for an operator to replay.
    [dead] = await _take_all(space.infra, topology.dead_queue(space.service))
    assert dead.headers[topology.HEADER_ATTEMPT] == 2
    assert dead.headers[topology.HEADER_SOURCE_QUEUE] == topology.work_queue(space.service)


async def test_a_parked_delivery_carries_the_receivers_last_http_status(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    hooks.script("busy", [500, 503])
    async with running_notifier(space, retry_tiers="50ms", webhook_max_attempts=2) as notifier:
        job = await space.jobs.create(webhook={"url": f"{base}/busy"})
        await space.jobs.start(job)
        await space.jobs.complete(job)
        await wait_until(
            lambda: _outcome_is(notifier, job.id, "dead"),
            timeout=10,
            what="the delivery parked",
            interval=0.02,
        )

    [dead] = await _take_all(space.infra, topology.dead_queue(space.service))
    assert dead.headers[topology.HEADER_HTTP_STATUS] == "503"
    assert dead.headers[topology.HEADER_ERROR] == "HTTP 503 (attempts exhausted: 2 of 2)"


async def test_a_worker_services_dead_letter_raises_an_alert_and_stays_in_its_queue(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    worker = f"{space.service}w"
    connection = await aio_pika.connect(space.infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        dead_exchange = await channel.declare_exchange(
            topology.DEAD_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_queue(
            topology.dead_queue(worker), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dead_exchange, routing_key=worker)
        async with running_notifier(
            space, alert_services=f"{worker},{space.service}", ops_webhook_url=f"{base}/ops"
        ):
            await dead_exchange.publish(
                aio_pika.Message(
                    b'{"id": "job-7", "type": "image.process"}',
                    message_id="job-7",
                    headers={
                        topology.HEADER_ERROR: "the input can never work",
                        topology.HEADER_ERROR_TYPE: "permanent",
                        topology.HEADER_ATTEMPT: 1,
                    },
                ),
                routing_key=worker,
            )
            [alert] = await hooks.wait_for("ops", 1)
        depth = await channel.declare_queue(topology.dead_queue(worker), passive=True)
        assert depth.declaration_result.message_count == 1
    finally:
        await connection.close()

    assert alert.json["queue"] == f"{worker}.dead"
    assert alert.json["reason"] == "permanent"
    assert alert.json["error"] == "the input can never work"
    assert alert.json["job_id"] == "job-7"


async def test_an_undecodable_delivery_message_is_parked_not_retried(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    async with running_notifier(space, ops_webhook_url=f"{base}/ops"):
        connection = await aio_pika.connect(space.infra.rabbitmq_url)
        try:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(b'{"not": "a delivery"}'),
                routing_key=topology.work_queue(space.service),
            )
        finally:
            await connection.close()
        [alert] = await hooks.wait_for("ops", 1)

    assert alert.json["reason"] == "invalid_message"
    [dead] = await _take_all(space.infra, topology.dead_queue(space.service))
    assert dead.body == b'{"not": "a delivery"}'


async def test_a_work_queue_with_messages_and_no_consumer_raises_one_alert(
    space: NotifierSpace, receiver: tuple[Receiver, str]
) -> None:
    hooks, base = receiver
    worker = f"{space.service}w"
    connection = await aio_pika.connect(space.infra.rabbitmq_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            topology.work_queue(worker), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"id": "job-8"}'), routing_key=topology.work_queue(worker)
        )
        async with running_notifier(
            space,
            alert_services=f"{worker},{space.service}",
            ops_webhook_url=f"{base}/ops",
            stall_alert_after_s=0.3,
            stall_check_interval_s=0.05,
        ):
            [alert] = await hooks.wait_for("ops", 1)
            # Later checks find the same stall: it is not alerted again.
            await asyncio.sleep(0.5)
            assert len(hooks.at("ops")) == 1
    finally:
        await connection.close()

    assert alert.json["type"] == "queue_stalled"
    assert alert.json["queue"] == topology.work_queue(worker)
    assert alert.json["ready"] == 1
