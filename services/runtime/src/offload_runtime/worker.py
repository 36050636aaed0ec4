"""One wiring for every worker service: broker, store, topology, runner, watchdog, lifecycle.

A worker's `app.py` calls `build_worker(...)` with its handlers, each made by
`job_handler(spec, run)` from its job type's spec; this module owns the rest,
so every service starts, declares, consumes and stops the same way.
"""

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from faststream import FastStream
from faststream.rabbit import RabbitBroker

from offload_contracts import Contract, JobRequestBase, JobSpec, topology
from offload_runtime import telemetry
from offload_runtime.broker import CONNECTION_LOST, declare_service_topology, make_broker
from offload_runtime.inflight import InFlightReporter
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import configure_logging, get_logger
from offload_runtime.metrics import LoopLagSampler, MetricsServer
from offload_runtime.redis import check_shard_count, connect_redis
from offload_runtime.runner import CancelCleanup, JobFunction, JobHandler, JobRunner
from offload_runtime.settings import WorkerSettings
from offload_runtime.store import JobStore
from offload_runtime.watchdog import ConsumerWatchdog, watch_consumer

Hook = Callable[[], Awaitable[None]]
InputT = TypeVar("InputT", bound=Contract)

log = get_logger("offload.worker")


@dataclass
class Worker:
    """A built worker: the FastStream app and the parts a test may want to reach."""

    app: FastStream
    broker: RabbitBroker
    store: JobStore
    runner: JobRunner
    watchdog: ConsumerWatchdog
    settings: WorkerSettings
    on_stop: list[Hook] = field(default_factory=list)
    metrics_server: MetricsServer | None = None
    """Serves `/metrics`, `/healthz` and `/readyz` while the worker runs (`metrics_port`)."""
    exit_code: int = 0
    """Non-zero once the worker gave up (its watchdog could not get it consuming again)."""

    def give_up(self, reason: str) -> None:
        """End the process with a non-zero exit, for its supervisor to start a fresh one."""
        log.error("worker giving up: not consuming", reason=reason)
        self.exit_code = 1
        self.app.exit()


def job_handler(
    spec: JobSpec[InputT, Any],
    run: JobFunction[JobRequestBase[InputT]],
    *,
    on_cancelled: CancelCleanup[JobRequestBase[InputT]] | None = None,
) -> JobHandler[JobRequestBase[InputT]]:
    """The handler of `spec`'s job type: its request model and policy, and `run`."""
    return JobHandler(spec.request, run, spec.policy, on_cancelled=on_cancelled)


def build_worker(
    *,
    service: str,
    settings: WorkerSettings,
    handlers: Sequence[JobHandler[Any]],
    on_start: Sequence[Hook] = (),
    on_stop: Sequence[Hook] = (),
    redis: "aioredis.Redis | None" = None,
) -> Worker:
    """Wire a worker service. No I/O happens until the app starts.

    `redis` is the client of the job store, when the service already made one for
    its own use (the file store): one connection pool per process, closed at stop.
    """
    broker = make_broker(
        settings.rabbitmq_url,
        service=service,
        graceful_timeout=settings.shutdown_grace_s,
        watched=True,
        quorum_size=settings.rabbitmq_quorum_size,
    )
    # Both are broker middlewares, added before the subscriber, and only when
    # asked for: with tracing off and broker metrics off the hot path is unchanged.
    telemetry.instrument_broker(broker, telemetry.tracer_provider_for(settings, service))
    if settings.broker_metrics:
        from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
        from prometheus_client import REGISTRY

        broker.add_middleware(
            RabbitPrometheusMiddleware(
                registry=REGISTRY, app_name=service, metrics_prefix="offload_broker"
            )
        )
    loop_lag = LoopLagSampler()
    redis = redis if redis is not None else connect_redis(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix, settings.redis_shards)
    store = JobStore(
        redis,
        keys,
        retention_s=settings.job_retention_s,
        events_maxlen=settings.job_events_maxlen,
        outage_wait_s=settings.redis_outage_wait_s,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    runner = JobRunner(
        service=service,
        broker=broker,
        store=store,
        handlers=handlers,
        tiers=settings.tiers,
        concurrency=settings.concurrency,
        delivery_limit=settings.delivery_limit,
        timeout_override_s=settings.job_timeout_s,
    )
    runner.subscribe()

    async def prepare_broker() -> None:
        await broker.connect()
        await declare_service_topology(
            broker, service, settings.tiers, delivery_limit=settings.delivery_limit
        )

    watchdog = watch_consumer(
        runner.consumer,
        prepare=prepare_broker,
        settings=settings,
        give_up=lambda reason: worker.give_up(reason),
    )
    metrics_server = (
        MetricsServer(settings.metrics_host, settings.metrics_port, ready=lambda: watchdog.live)
        if settings.metrics_port is not None
        else None
    )
    in_flight = InFlightReporter(
        redis,
        keys,
        topology.work_queue(service),
        lambda: runner.unacked,
    )

    async def startup() -> None:
        configure_logging(service, level=settings.log_level, fmt=settings.log_format)
        if metrics_server is not None:
            metrics_server.start()
        loop_lag.start()
        await check_shard_count(redis, keys)  # also the first sign that Redis answers
        try:
            await prepare_broker()
        except CONNECTION_LOST as exc:
            # RabbitMQ is away or went away mid-way: the watchdog subscribes once it is back.
            log.warning("RabbitMQ unreachable at start-up", error=repr(exc))
        for hook in on_start:
            await hook()
        await runner.start()
        in_flight.start()
        log.info(
            "worker starting",
            concurrency=settings.concurrency,
            tiers=[tier.name for tier in settings.tiers],
        )

    async def watch() -> None:
        # After FastStream's own start of the subscriber, which may have been cut short.
        watchdog.start()

    async def stop_watching() -> None:
        # Before FastStream stops the subscriber: a stopped consumer is not a lost one.
        await watchdog.stop()

    async def shutdown() -> None:
        # FastStream has already stopped consuming and waited `shutdown_grace_s`
        # for in-flight jobs; what still runs is cancelled and left unacked.
        await runner.stop()
        await in_flight.stop()
        for hook in on_stop:
            await hook()
        await redis.aclose()
        await loop_lag.stop()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("worker stopped")

    app = FastStream(
        broker,
        on_startup=[startup],
        after_startup=[watch],
        on_shutdown=[stop_watching],
        after_shutdown=[shutdown],
        logger=None,
    )
    worker = Worker(
        app=app,
        broker=broker,
        store=store,
        runner=runner,
        watchdog=watchdog,
        settings=settings,
        metrics_server=metrics_server,
    )
    return worker


EXIT_WAIT_S = 2.0


def run_worker(worker: Worker) -> None:
    """Run until SIGINT/SIGTERM (or until the worker gives up), on uvloop; then exit."""
    import uvloop

    sys.exit(uvloop.run(_run_then_exit(worker)))


async def _run_then_exit(worker: Worker) -> int:
    try:
        await worker.app.run()
        code = worker.exit_code
    except Exception:
        log.exception("worker failed")
        code = 1
    # A process that cannot exit is worse than one that exits: its supervisor sees
    # it alive, and it runs nothing. Tasks left behind are cancelled with a bound;
    # aio-pika's reconnection task ignores cancellation while its connection is open,
    # and FastStream leaves such a connection behind when a connect is cut short
    # after the TCP handshake, so the usual asyncio teardown could wait for ever.
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    if leftovers:
        _, pending = await asyncio.wait(leftovers, timeout=EXIT_WAIT_S)
        if pending:
            log.warning("tasks still running at exit; exiting without them", count=len(pending))
            logging.shutdown()
            os._exit(code)
    return code
