"""The retrying consumer's decisions, through FastStream's test broker.

What a retry or a dead letter looks like (queue, body, headers) and which hooks
run in which order. The test broker emulates no TTL, dead-lettering or
redelivery: those are tested against the real RabbitMQ (tests/integration).
"""

import json
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from faststream.rabbit import (
    ExchangeType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
    TestRabbitBroker,
)

from offload_contracts import topology
from offload_runtime.broker import work_queue
from offload_runtime.consumer import RetryingConsumer
from offload_runtime.errors import Deferred, PermanentError, TransientError
from offload_runtime.settings import RetryTier, parse_retry_tiers
from offload_runtime.work import Delivery, Failure, InvalidMessage

SERVICE = "svc"
TIERS = parse_retry_tiers("1s,10s")
MAX_ATTEMPTS = 3

Item = dict[str, Any]


class FakeWork:
    """A message is `{"id", "attempt", "do"}`; `do` says how its attempt ends."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def decode(self, delivery: Delivery) -> Item:
        try:
            item: Item = json.loads(delivery.body)
        except ValueError:
            raise InvalidMessage("message rejected: not JSON") from None
        return item

    def context(self, item: Item) -> AbstractContextManager[object]:
        return nullcontext()

    def attempts(self, item: Item) -> tuple[int, int]:
        return item["attempt"], MAX_ATTEMPTS

    def message_id(self, item: Item) -> str:
        return str(item["id"])

    def next_attempt(self, item: Item, tier: RetryTier, retry_after: float | None) -> bytes:
        return json.dumps({**item, "attempt": item["attempt"] + 1}).encode()

    async def begin(self, item: Item) -> bool:
        self.calls.append(("begin", item["attempt"]))
        return item["do"] != "skip"

    async def run(self, item: Item) -> str:
        do = item["do"]
        if do == "transient":
            raise TransientError("busy", retry_after=item.get("retry_after"), http_status=503)
        if do == "permanent":
            raise PermanentError("bad request", http_status=400)
        if do == "crash":
            raise RuntimeError("boom")
        if do == "defer":
            raise Deferred(5)
        return "done"

    async def succeeded(self, item: Item, result: Any) -> None:
        self.calls.append(("succeeded", result))

    async def retrying(self, item: Item, failure: Failure, tier: RetryTier) -> bool:
        self.calls.append(("retrying", failure.type, tier.name))
        return True

    async def failed(self, item: Item | None, body: bytes, failure: Failure) -> None:
        self.calls.append(("failed", item is not None, failure.type, failure.message))


class Rig:
    def __init__(self) -> None:
        self.broker = RabbitBroker()
        self.work = FakeWork()
        self.consumer = RetryingConsumer(
            service=SERVICE,
            broker=self.broker,
            work=self.work,
            tiers=TIERS,
            concurrency=4,
            delivery_limit=5,
            description="test",
        )
        self.consumer.subscribe()
        self.retries: dict[str, list[Any]] = {tier.name: [] for tier in TIERS}
        self.dead: list[Any] = []
        for tier in TIERS:
            self._capture(RabbitQueue(topology.retry_queue(SERVICE, tier.name)), None, tier.name)
        self._capture(
            RabbitQueue(topology.dead_queue(SERVICE), routing_key=SERVICE),
            RabbitExchange(topology.DEAD_EXCHANGE, type=ExchangeType.DIRECT),
            None,
        )

    def _capture(
        self, queue: RabbitQueue, exchange: RabbitExchange | None, tier: str | None
    ) -> None:
        found = self.retries[tier] if tier else self.dead

        async def passthrough(message: Any) -> Any:
            return message

        @self.broker.subscriber(queue, exchange, decoder=passthrough)
        async def capture(message: Any) -> None:
            found.append(message)

    async def send(self, body: bytes | Item) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        # The test broker routes by the queue's binding key, not by its name.
        await self.broker.publish(raw, queue=work_queue(SERVICE, delivery_limit=5))


@pytest.fixture
async def rig() -> Any:
    rig = Rig()
    async with TestRabbitBroker(rig.broker):
        yield rig


async def test_a_success_is_recorded_then_acked_and_nothing_is_published(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 1, "do": "ok"})
    assert rig.work.calls == [("begin", 1), ("succeeded", "done")]
    assert rig.dead == [] and all(not found for found in rig.retries.values())
    assert (rig.consumer.held, rig.consumer.deliveries) == (0, 1)


async def test_a_skipped_message_runs_nothing(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 1, "do": "skip"})
    assert rig.work.calls == [("begin", 1)]
    assert rig.dead == []


async def test_a_transient_failure_goes_to_its_tier_with_the_attempt_counted(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 2, "do": "transient"})
    [retry] = rig.retries["10s"]
    assert json.loads(retry.body) == {"id": "j1", "attempt": 3, "do": "transient"}
    assert retry.message_id == "j1"
    assert rig.work.calls == [("begin", 2), ("retrying", "transient", "10s")]
    assert rig.dead == []


async def test_an_unclassified_exception_is_transient(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 1, "do": "crash"})
    [retry] = rig.retries["1s"]
    assert json.loads(retry.body)["attempt"] == 2
    assert rig.work.calls[-1] == ("retrying", "RuntimeError", "1s")


async def test_a_retry_after_picks_the_first_tier_at_least_that_long(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 1, "do": "transient", "retry_after": 2})
    assert len(rig.retries["10s"]) == 1 and rig.retries["1s"] == []


async def test_the_last_attempt_is_parked_with_every_header(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": MAX_ATTEMPTS, "do": "transient"})
    [dead] = rig.dead
    headers = dead.headers
    assert headers[topology.HEADER_ERROR] == "busy (attempts exhausted: 3 of 3)"
    assert headers[topology.HEADER_ERROR_TYPE] == "transient"
    assert headers[topology.HEADER_ATTEMPT] == MAX_ATTEMPTS
    assert headers[topology.HEADER_SOURCE_QUEUE] == topology.work_queue(SERVICE)
    assert headers[topology.HEADER_HTTP_STATUS] == "503"
    assert topology.HEADER_FAILED_AT in headers
    assert dead.message_id == "j1"
    assert rig.work.calls[-1] == ("failed", True, "transient", "busy (attempts exhausted: 3 of 3)")
    assert all(not found for found in rig.retries.values())


async def test_a_permanent_failure_is_parked_at_once(rig: Rig) -> None:
    await rig.send({"id": "j1", "attempt": 1, "do": "permanent"})
    [dead] = rig.dead
    assert dead.headers[topology.HEADER_ERROR] == "bad request"
    assert dead.headers[topology.HEADER_HTTP_STATUS] == "400"
    assert rig.work.calls[-1] == ("failed", True, "permanent", "bad request")


async def test_a_deferred_message_waits_again_unchanged_with_no_attempt_counted(rig: Rig) -> None:
    body = {"id": "j1", "attempt": 2, "do": "defer"}
    await rig.send(body)
    [again] = rig.retries["10s"]  # the first tier at least 5 s long
    assert json.loads(again.body) == body
    assert rig.work.calls == [("begin", 2)]


async def test_a_message_no_contract_accepts_is_parked_without_an_http_status(rig: Rig) -> None:
    await rig.send(b"{not json")
    [dead] = rig.dead
    assert dead.body == b"{not json"
    assert dead.headers[topology.HEADER_ERROR_TYPE] == "invalid_message"
    assert dead.headers[topology.HEADER_ATTEMPT] == 0
    assert topology.HEADER_HTTP_STATUS not in dead.headers
    assert rig.work.calls == [("failed", False, "invalid_message", "message rejected: not JSON")]
