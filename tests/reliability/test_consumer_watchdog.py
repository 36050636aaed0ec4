"""A worker that is alive and connected must be consuming: the consumer watchdog, end to end.

A worker process talks to RabbitMQ through an AMQP-aware proxy, which stages
the faults at an exact point of the protocol: the broker going away while the
worker declares or subscribes, and the broker dropping the worker's consumer
(with RabbitMQ's cancel notification, and without a word).
"""

import asyncio
import time
from urllib.parse import urlsplit

import httpx
import pytest

from offload_contracts import JobStatus
from tests.reliability.outcomes import settle
from tests.support.amqp_proxy import AmqpProxy, amqp_proxy
from tests.support.harness import Harness
from tests.support.infra import Infra
from tests.support.notifier import Receiver, notifier_space, running_notifier, serve
from tests.support.processes import ServiceProcess
from tests.support.serving import free_port
from tests.support.waiting import wait_until

CHECK_S = 0.2
GIVE_UP_S = 4.0
# The documented bound: a lost consumer is found at the next check and, when
# the broker answers, consuming again at the one after; two intervals, plus
# the start of a fresh channel.
RECOVERY_BOUND_S = 2 * CHECK_S + 1.0


def _broker_port(harness: Harness) -> int:
    return urlsplit(harness.settings.rabbitmq_url).port or 5672


def _watched_worker(harness: Harness, proxy: AmqpProxy) -> tuple[ServiceProcess, str]:
    port = free_port()
    process = harness.worker_process(
        rabbitmq_url=proxy.url_for(harness.settings.rabbitmq_url),
        metrics_port=port,
        consumer_check_interval_s=CHECK_S,
        consumer_give_up_s=GIVE_UP_S,
    )
    return process, f"http://127.0.0.1:{port}"


async def _ready(base_url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(f"{base_url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    ("method", "after"),
    [
        ("channel.open", False),
        ("basic.qos", True),
        ("queue.declare", False),
        ("queue.bind", True),
        ("basic.consume", False),
        ("basic.consume", True),
    ],
)
async def test_a_broker_restart_during_start_up_leaves_the_worker_consuming(
    harness: Harness, method: str, after: bool
) -> None:
    async with amqp_proxy(_broker_port(harness)) as proxy:
        # The broker goes away at the worker's first `method` (with `after`, once
        # it has acted on it) and is back half a second later.
        proxy.cut_on(method, after=after, down_s=0.5)
        worker, base_url = _watched_worker(harness, proxy)
        worker.start()
        ids = await harness.submit_many(20, sleep_s=0.01)

        outcome = await settle(
            harness.store,
            ids,
            scenario=f"RabbitMQ restart at the worker's first {method}"
            + (" (acted on, reply lost)" if after else ""),
            load="20 jobs submitted during start-up",
            timeout=30,
        )
        assert proxy.cuts == 1, "the fault was not staged"
        assert worker.process and worker.process.poll() is None, worker.logs()[-3000:]
        outcome.assert_nothing_lost_or_duplicated()
        # Readiness trails the consumer by up to one check.
        await wait_until(
            lambda: _ready(base_url), timeout=RECOVERY_BOUND_S, what="/readyz", interval=0.02
        )


@pytest.mark.parametrize("tell_clients", [False, True], ids=["silently", "with-cancel-notice"])
async def test_a_consumer_dropped_by_the_broker_is_back_within_the_bound(
    harness: Harness, tell_clients: bool
) -> None:
    async with amqp_proxy(_broker_port(harness)) as proxy:
        worker, base_url = _watched_worker(harness, proxy)
        worker.start()
        await wait_until(
            lambda: _ready(base_url), timeout=30, what="the worker's /readyz", interval=0.02
        )
        first = await harness.submit_many(10, sleep_s=0.01)
        await harness.wait_all(first, {JobStatus.COMPLETED}, timeout=15)

        assert await proxy.cancel_consumers(tell_clients=tell_clients) == 1
        dropped_at = time.monotonic()
        second = await harness.submit_many(30, sleep_s=0.01)
        await harness.wait_all(second[:1], {JobStatus.COMPLETED}, timeout=15)
        back_after = time.monotonic() - dropped_at

        outcome = await settle(
            harness.store,
            first + second,
            scenario="consumer dropped by the broker "
            + ("with a cancel notification" if tell_clients else "without a word"),
            load=f"30 jobs submitted after the drop; consuming again after {back_after:.2f} s",
            timeout=30,
        )
        outcome.assert_nothing_lost_or_duplicated()
        assert back_after < RECOVERY_BOUND_S, f"consuming again only after {back_after:.2f} s"
        assert worker.process and worker.process.poll() is None


async def test_a_worker_that_cannot_consume_again_is_not_ready_then_exits_non_zero(
    harness: Harness,
) -> None:
    async with amqp_proxy(_broker_port(harness)) as proxy:
        worker, base_url = _watched_worker(harness, proxy)
        worker.start()
        await wait_until(
            lambda: _ready(base_url), timeout=30, what="the worker's /readyz", interval=0.02
        )

        proxy.go_down(600)  # the broker is gone for good, as far as this worker can tell
        gone_at = time.monotonic()
        await wait_until(
            lambda: _not_ready(base_url),
            timeout=5,
            what="/readyz to say not ready (503)",
            interval=0.02,
        )
        assert worker.process is not None
        code = await asyncio.to_thread(worker.process.wait, GIVE_UP_S + 10)
        took = time.monotonic() - gone_at

        assert code == 1, worker.logs()[-3000:]
        assert took >= GIVE_UP_S, f"gave up after {took:.1f} s, before its bound"
        assert "worker giving up: not consuming" in worker.logs()


async def _not_ready(base_url: str) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        return (await client.get(f"{base_url}/readyz")).status_code == 503


@pytest.mark.parametrize("tell_clients", [False, True])
async def test_the_notifiers_webhook_consumer_dropped_by_the_broker_is_back_within_the_bound(
    infra: Infra, tell_clients: bool
) -> None:
    hooks = Receiver()
    port = urlsplit(infra.rabbitmq_url).port or 5672
    async with (
        notifier_space(infra) as space,
        serve(hooks.app) as receiver,
        amqp_proxy(port) as proxy,
        running_notifier(
            space,
            rabbitmq_url=proxy.url_for(infra.rabbitmq_url),
            consumer_check_interval_s=CHECK_S,
            consumer_give_up_s=GIVE_UP_S,
        ),
    ):
        before = await space.jobs.create(webhook={"url": f"{receiver}/before"})
        await space.jobs.start(before)
        await space.jobs.complete(before)
        await hooks.wait_for("before", 1)

        # Its two consumers: webhook deliveries (watched) and dead-letter alerts.
        assert await proxy.cancel_consumers(tell_clients=tell_clients) == 2
        dropped_at = time.monotonic()
        after = await space.jobs.create(webhook={"url": f"{receiver}/after"})
        await space.jobs.start(after)
        await space.jobs.complete(after)
        await hooks.wait_for("after", 1, timeout=15)
        back_after = time.monotonic() - dropped_at

    assert back_after < RECOVERY_BOUND_S, f"delivering again only after {back_after:.2f} s"
