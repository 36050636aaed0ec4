"""The gateway and RabbitMQ: outages, failed publishes, topology at start-up, the sweep."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from offload_contracts import AiGenerateInput, AiGenerateRequest, JobStatus, topology
from tests.support.gateway import (
    INPUTS,
    ai_job,
    assert_problem,
    running_gateway,
    take_request,
)
from tests.support.infra import Infra
from tests.support.scrape import metric_value
from tests.support.serving import free_port
from tests.support.waiting import wait_until

REPUBLISHED = "offload_gateway_sweep_republished_total"


def via_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))


class TcpProxy:
    """A TCP forwarder to RabbitMQ that the test can start and cut, like a broker outage."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        """Stop listening and drop every open connection."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def channel(infra: Infra) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


# ---------------------------------------------------------------------- outages


async def test_with_the_broker_down_it_starts_answers_and_refuses_jobs_fast(infra: Infra) -> None:
    closed = via_port(infra.rabbitmq_url, free_port())
    began = time.monotonic()
    async with running_gateway(infra, rabbitmq_url=closed, ready=False) as gw, gw.client() as http:
        assert time.monotonic() - began < 5  # started without waiting for the broker
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "broker": False, "redis": True}

        submit_began = time.monotonic()
        refused = await http.post("/v1/jobs", json=ai_job())
        assert time.monotonic() - submit_began < 2
        problem = assert_problem(refused, 503)
        assert "broker" in problem["detail"]
        assert refused.headers["retry-after"] == str(gw.settings.unavailable_retry_after_s)
        # Nothing was recorded, and reads still work.
        assert (await http.get("/v1/jobs")).json()["items"] == []
        assert (await http.get("/v1/webhook-secret")).status_code == 200


async def test_it_connects_by_itself_when_the_broker_comes_and_goes(infra: Infra) -> None:
    parts = urlsplit(infra.rabbitmq_url)
    proxy = TcpProxy(free_port(), (parts.hostname or "127.0.0.1", parts.port or 5672))
    url = via_port(infra.rabbitmq_url, proxy.port)
    async with running_gateway(infra, rabbitmq_url=url, ready=False) as gw, gw.client() as http:
        assert (await http.post("/v1/jobs", json=ai_job())).status_code == 503

        await proxy.start()  # the broker "comes up"
        await gw.wait_ready()
        first = await http.post("/v1/jobs", json=ai_job())
        assert first.status_code == 202, first.text
        await take_request(infra, first.json()["id"])

        await proxy.cut()  # an outage
        await wait_until(
            lambda: http.get("/readyz"),
            lambda answer: answer.status_code == 503,
            timeout=10,
            what="readyz noticing the outage",
            describe=lambda answer: answer.text,
        )
        during = await http.post("/v1/jobs", json=ai_job())
        assert_problem(during, 503)

        await proxy.start()  # the broker is back: aio-pika's robust connection reconnects
        await gw.wait_ready(timeout=20)
        after = await http.post("/v1/jobs", json=ai_job())
        assert after.status_code == 202, after.text
        await take_request(infra, after.json()["id"])
        await proxy.cut()


async def test_a_publish_the_broker_refuses_fails_the_job_and_frees_its_key(
    infra: Infra,
) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    async with running_gateway(infra) as gw, gw.client() as http, channel(infra) as ch:
        jobs_exchange = await ch.get_exchange(topology.JOBS_EXCHANGE)
        queue = await ch.get_queue(topology.work_queue("ai"), ensure=False)
        await queue.unbind(jobs_exchange, topology.work_binding("ai"))  # ai.generate: unroutable
        try:
            refused = await http.post("/v1/jobs", json=ai_job("lost"), headers=key)
        finally:
            await queue.bind(jobs_exchange, topology.work_binding("ai"))
        problem = assert_problem(refused, 503)
        assert "did not confirm" in problem["detail"]
        assert "retry-after" in refused.headers

        # The job is not left waiting: it is failed, and says why.
        listed = (await http.get("/v1/jobs")).json()["items"]
        assert len(listed) == 1
        failed = listed[0]
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "not_accepted" and failed["error"]["retryable"]
        assert (
            await gw.deps.redis.zscore(gw.keys.unstarted(gw.keys.shard(failed["id"])), failed["id"])
            is None
        )

        # The key was released: the client's retry makes a new job, which is queued.
        retried = await http.post("/v1/jobs", json=ai_job("lost"), headers=key)
        assert retried.status_code == 202, retried.text
        assert retried.json()["id"] != failed["id"]
        await take_request(infra, retried.json()["id"])


async def test_it_declares_every_worker_topology_so_jobs_route_before_workers_start(
    infra: Infra,
) -> None:
    async with channel(infra) as ch:
        await ch.queue_delete(topology.work_queue("research"))
    async with running_gateway(infra) as gw, gw.client() as http:
        async with channel(infra) as ch:
            for service in topology.WORKER_SERVICES:
                for name in (topology.work_queue(service), topology.dead_queue(service)):
                    await ch.declare_queue(name, passive=True)  # raises if missing
        answer = await http.post(
            "/v1/jobs", json={"type": "research.run", "input": INPUTS["research.run"]}
        )
        assert answer.status_code == 202
        await take_request(infra, answer.json()["id"])


# ---------------------------------------------------------------------- the sweep


def lost_request(tenant: str = "acme") -> AiGenerateRequest:
    return AiGenerateRequest(
        id=uuid.uuid4().hex,
        tenant=tenant,
        max_attempts=3,
        created_at=datetime.now(UTC),
        input=AiGenerateInput(prompt="published never"),
    )


async def test_the_sweep_republishes_a_job_whose_publish_was_lost(infra: Infra) -> None:
    async with running_gateway(infra, sweep_after="300ms") as gw, gw.client() as http:
        before = metric_value((await http.get("/metrics")).text, REPUBLISHED)
        request = lost_request()
        # What a gateway that died between recording and publishing leaves behind.
        assert (await gw.deps.store.create(request)).applied
        recorded_at = time.monotonic()

        queued = await take_request(infra, request.id, timeout=10)

        assert time.monotonic() - recorded_at >= 0.3
        assert queued["attempt"] == 1
        assert AiGenerateInput.model_validate(queued["input"]) == request.input
        job = (await http.get(f"/v1/jobs/{request.id}")).json()
        assert job["status"] == "waiting"
        # Its deadline moved on, so it is not published again at every pass.
        score = await gw.deps.redis.zscore(gw.keys.unstarted(gw.keys.shard(request.id)), request.id)
        assert score is not None and score > request.created_at.timestamp() * 1000
        assert metric_value((await http.get("/metrics")).text, REPUBLISHED) == before + 1


async def test_the_sweep_skips_started_jobs_and_waits_for_the_lock(infra: Infra) -> None:
    async with running_gateway(infra, sweep_after="100ms") as gw:
        started = lost_request()
        await gw.deps.store.create(started)
        await gw.deps.store.start(started, "run-1", redelivered=False)
        waiting = lost_request()
        # Another replica holds the sweep lock.
        await gw.deps.redis.set(gw.keys.sweep_lock, "another-replica", px=60_000)
        await gw.deps.store.create(waiting)
        await asyncio.sleep(0.6)  # several passes past the deadline, all locked out
        assert await gw.deps.redis.zscore(
            gw.keys.unstarted(gw.keys.shard(waiting.id)), waiting.id
        ) == (int(waiting.created_at.timestamp() * 1000))

        await gw.deps.redis.delete(gw.keys.sweep_lock)
        await take_request(infra, waiting.id)
        record = await gw.deps.store.get(started.id)
        assert record is not None and record.status == JobStatus.ACTIVE
        assert (
            await gw.deps.redis.zscore(gw.keys.unstarted(gw.keys.shard(started.id)), started.id)
            is None
        )
