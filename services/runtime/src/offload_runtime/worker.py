"""One wiring for every worker service: broker, store, topology, runner, lifecycle.

A worker's `app.py` calls `build_worker_app(...)` with its handlers; this
module owns the rest, so every service starts, declares, consumes and stops
the same way.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream import FastStream
from faststream.rabbit import RabbitBroker

from offload_contracts import topology
from offload_runtime import telemetry
from offload_runtime.broker import declare_service_topology, make_broker
from offload_runtime.inflight import InFlightReporter
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import configure_logging, get_logger
from offload_runtime.metrics import LoopLagSampler, MetricsServer
from offload_runtime.redis import connect_redis
from offload_runtime.runner import JobHandler, JobRunner
from offload_runtime.settings import WorkerSettings
from offload_runtime.store import JobStore

Hook = Callable[[], Awaitable[None]]

log = get_logger("offload.worker")


@dataclass
class Worker:
    """A built worker: the FastStream app and the parts a test may want to reach."""

    app: FastStream
    broker: RabbitBroker
    store: JobStore
    runner: JobRunner
    settings: WorkerSettings
    on_stop: list[Hook] = field(default_factory=list)
    metrics_server: MetricsServer | None = None
    """Serves `/metrics` while the worker runs, when `metrics_port` is set."""


def build_worker(
    *,
    service: str,
    settings: WorkerSettings,
    handlers: Sequence[JobHandler[Any]],
    on_start: Sequence[Hook] = (),
    on_stop: Sequence[Hook] = (),
) -> Worker:
    """Wire a worker service. No I/O happens until the app starts."""
    broker = make_broker(
        settings.rabbitmq_url, service=service, graceful_timeout=settings.shutdown_grace_s
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
    metrics_server = (
        MetricsServer(settings.metrics_host, settings.metrics_port)
        if settings.metrics_port is not None
        else None
    )
    loop_lag = LoopLagSampler()
    store = JobStore(
        connect_redis(settings.redis_url),
        RedisKeys(settings.redis_prefix),
        retention_s=settings.job_retention_s,
        events_maxlen=settings.job_events_maxlen,
        outage_wait_s=settings.redis_outage_wait_s,
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
    in_flight = InFlightReporter(
        store.client,
        store.keys,
        topology.work_queue(service),
        lambda: runner.unacked,
    )

    async def startup() -> None:
        configure_logging(service, level=settings.log_level, fmt=settings.log_format)
        if metrics_server is not None:
            metrics_server.start()
        loop_lag.start()
        await store.client.ping()
        await broker.connect()
        await declare_service_topology(
            broker, service, settings.tiers, delivery_limit=settings.delivery_limit
        )
        for hook in on_start:
            await hook()
        await runner.start()
        in_flight.start()
        log.info(
            "worker starting",
            concurrency=settings.concurrency,
            tiers=[tier.name for tier in settings.tiers],
        )

    async def shutdown() -> None:
        # FastStream has already stopped consuming and waited `shutdown_grace_s`
        # for in-flight jobs; what still runs is cancelled and left unacked.
        await runner.stop()
        await in_flight.stop()
        for hook in on_stop:
            await hook()
        await store.client.aclose()
        await loop_lag.stop()
        if metrics_server is not None:
            metrics_server.stop()
        log.info("worker stopped")

    app = FastStream(broker, on_startup=[startup], after_shutdown=[shutdown], logger=None)
    return Worker(
        app=app,
        broker=broker,
        store=store,
        runner=runner,
        settings=settings,
        metrics_server=metrics_server,
    )


def run_worker(worker: Worker) -> None:
    """Run until SIGINT/SIGTERM, on uvloop."""
    import uvloop

    uvloop.run(worker.app.run())
