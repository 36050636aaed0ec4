"""A runtime test harness: real broker and Redis, a worker on a unique service name."""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from offload_contracts import JobEvent, topology
from offload_runtime.broker import declare_service_topology, publish_confirmed
from offload_runtime.runner import JobHandler
from offload_runtime.settings import WorkerSettings
from offload_runtime.store import new_id
from offload_runtime.worker import Worker, build_worker
from tests.support.infra import Infra
from tests.support.processes import ServiceProcess
from tests.support.rig import JobRig
from tests.support.rig import job_events as job_events  # imported from here by some tests
from tests.support.testjob import ProbeInput, ProbeRequest
from tests.support.topologies import delete_queues, service_queue_names
from tests.support.waiting import wait_until


class Harness(JobRig):
    """The probe job type (`tests.support.testjob`) on a service of its own."""

    wait_timeout = 10

    def __init__(self, infra: Infra, **settings_overrides: Any) -> None:
        self.infra = infra
        self.service = f"t{uuid.uuid4().hex[:10]}"
        values: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": f"{infra.redis_prefix}{self.service}:",
            "retry_tiers": "50ms,100ms",
            "concurrency": 8,
            "shutdown_grace_s": 1,
            "log_level": "warning",
        }
        values.update(settings_overrides)
        self.settings = WorkerSettings(**values)
        super().__init__(
            rabbitmq_url=self.settings.rabbitmq_url,
            redis_url=self.settings.redis_url,
            redis_prefix=self.settings.redis_prefix,
            name=f"{self.service}-test",
            events_maxlen=100,
        )
        self.workers: list[Worker] = []
        self.processes: list[ServiceProcess] = []
        self._settings_used = [self.settings]  # their retry tiers name the queues to delete

    async def open(self) -> None:
        await super().open()
        await declare_service_topology(
            self.broker,
            self.service,
            self.settings.tiers,
            delivery_limit=self.settings.delivery_limit,
        )

    async def close(self) -> None:
        for process in self.processes:
            process.stop()
        for worker in self.workers:
            await worker.app.stop()
        await super().close()
        tiers = {tier for settings in self._settings_used for tier in settings.tiers}
        await delete_queues(self.settings.rabbitmq_url, service_queue_names(self.service, tiers))

    async def start_worker(self, handler: JobHandler[Any], **overrides: Any) -> Worker:
        settings = self.settings.model_copy(update=overrides)
        self._settings_used.append(settings)
        worker = build_worker(service=self.service, settings=settings, handlers=[handler])
        await worker.app.start()
        self.workers.append(worker)
        return worker

    # ------------------------------------------------------------------ submitting

    def request(
        self, max_attempts: int = 3, job_id: str | None = None, **spec: Any
    ) -> ProbeRequest:
        return ProbeRequest(
            id=job_id or new_id(),
            tenant="acme",
            max_attempts=max_attempts,
            created_at=datetime.now(UTC),
            input=ProbeInput(**spec),
        )

    async def submit(self, max_attempts: int = 3, **spec: Any) -> ProbeRequest:
        """What the gateway does: record `waiting`, then publish with a confirm."""
        request = self.request(max_attempts=max_attempts, **spec)
        return await self.submit_request(request, routing_key=f"{self.service}.job")

    async def submit_many(self, count: int, **spec: Any) -> list[str]:
        """Submit `count` jobs concurrently; their ids in submission order."""
        jobs = await asyncio.gather(*(self.submit(**spec) for _ in range(count)))
        return [job.id for job in jobs]

    async def publish(self, body: bytes) -> None:
        """Publish raw bytes to the service's work queue, as a broken producer might."""
        await publish_confirmed(
            self.broker, body, exchange=topology.JOBS_EXCHANGE, routing_key=f"{self.service}.job"
        )

    # ------------------------------------------------------------------ observing

    async def outbox_events(self, job_id: str) -> list[JobEvent]:
        entries = await self.redis.xrange(self.keys.outbox(self.keys.shard(job_id)))
        events = [JobEvent.model_validate_json(fields["data"]) for _, fields in entries]
        return [event for event in events if event.job_id == job_id]

    async def take_dead(self, expected: int, timeout: float = 10) -> list[AbstractIncomingMessage]:
        """Take `expected` messages from the service's dead queue (waiting for them)."""
        connection = await aio_pika.connect(self.settings.rabbitmq_url)
        taken: list[AbstractIncomingMessage] = []
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.dead_queue(self.service), ensure=False)

            async def take() -> list[AbstractIncomingMessage]:
                while len(taken) < expected:
                    if (message := await queue.get(no_ack=True, fail=False)) is None:
                        break
                    taken.append(message)
                return taken

            await wait_until(
                take,
                lambda taken: len(taken) >= expected,
                timeout=timeout,
                what=f"{expected} messages in {topology.dead_queue(self.service)}",
                interval=0.02,
                describe=lambda taken: f"{len(taken)} taken",
            )
        finally:
            await connection.close()
        return taken

    def worker_process(self, **overrides: Any) -> ServiceProcess:
        """This harness's probe service as a real worker process (not started yet)."""
        keys = (
            "rabbitmq_url",
            "redis_url",
            "redis_prefix",
            "retry_tiers",
            "concurrency",
            "shutdown_grace_s",
            "log_level",
        )
        settings = {key: getattr(self.settings, key) for key in keys} | overrides
        self._settings_used.append(
            self.settings.model_copy(update={"retry_tiers": settings["retry_tiers"]})
        )
        process = ServiceProcess("tests.support.probe_worker", self.service, settings=settings)
        self.processes.append(process)
        return process

    async def queue_depth(self, name: str) -> int:
        connection = await aio_pika.connect(self.settings.rabbitmq_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await connection.close()
