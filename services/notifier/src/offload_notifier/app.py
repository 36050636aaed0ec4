"""Wiring of the notifier: one process serves SSE, relays the outbox, delivers webhooks
and raises dead-letter alerts. All its state is in Redis and RabbitMQ, so any
number of replicas can run side by side and any of them serves any job."""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from faststream.rabbit import RabbitBroker
from redis.exceptions import RedisClusterException, RedisError

from offload_contracts import topology
from offload_notifier import handlers
from offload_notifier.adapters.http import (
    GuardedURLs,
    HttpOpsWebhook,
    HttpxTransport,
    SecretsSigner,
)
from offload_notifier.adapters.outbox import RedisOutbox
from offload_notifier.adapters.rabbit import RabbitPublisher, declare_notifier_topology
from offload_notifier.adapters.redis_store import RedisDeliveryLog, RedisJobs, RedisTenantStreams
from offload_notifier.adapters.redis_streams import ShardedStreamHub
from offload_notifier.adapters.tracing import DeliverySpans
from offload_notifier.alerts import raise_stall_alert
from offload_notifier.relay import Relay, ShardRelays
from offload_notifier.routes import RouteDeps, build_router, install_problem_handlers
from offload_notifier.settings import NotifierSettings
from offload_notifier.stalls import StallTracker, StallWatch
from offload_notifier.streams import StreamSlots
from offload_notifier.webhooks import Deliverer
from offload_runtime import telemetry
from offload_runtime.broker import make_broker, queue_counts
from offload_runtime.inflight import InFlightReporter
from offload_runtime.keys import RedisKeys
from offload_runtime.logging import configure_logging, get_logger
from offload_runtime.metrics import LoopLagSampler
from offload_runtime.redis import check_shard_count, connect_redis
from offload_runtime.store import utcnow
from offload_runtime.watchdog import watch_consumer
from offload_runtime.webhook_secrets import WebhookSecrets

log = get_logger("offload.notifier")


@dataclass
class NotifierDeps:
    """What a test may replace; everything left None is built from the settings."""

    redis: "aioredis.Redis | None" = None
    broker: RabbitBroker | None = None
    transport: HttpxTransport | None = None
    clock: Callable[[], float] = time.time


@dataclass
class Notifier:
    """The running parts, reachable from `app.state.notifier` (tests, diagnostics)."""

    settings: NotifierSettings
    keys: RedisKeys
    redis: "aioredis.Redis"
    broker: RabbitBroker
    relay: ShardRelays
    hub: ShardedStreamHub
    outboxes: list[RedisOutbox]
    deliveries: RedisDeliveryLog
    slots: StreamSlots


def build_app(
    settings: NotifierSettings | None = None, deps: NotifierDeps | None = None
) -> FastAPI:
    """Wire the notifier. No I/O happens until the app's lifespan starts."""
    settings = settings or NotifierSettings()
    deps = deps or NotifierDeps()
    service = settings.notifier_service
    keys = RedisKeys(settings.redis_prefix, settings.redis_shards)
    # A burst of SSE clients each makes a few short calls: they queue for a
    # pooled connection rather than being refused (the pool blocks when full).
    # Each shard's relay holds one more connection, in its blocked read of the outbox, and
    # so does each shard's SSE reader while it has followers.
    redis = deps.redis or connect_redis(
        settings.redis_url, max_connections=settings.redis_max_connections + 2 * keys.shards
    )
    broker = deps.broker or make_broker(
        settings.rabbitmq_url, service=service, quorum_size=settings.rabbitmq_quorum_size
    )
    tracing = telemetry.tracer_provider_for(settings, service)
    telemetry.instrument_broker(broker, tracing)
    loop_lag = LoopLagSampler()
    transport = deps.transport or HttpxTransport(
        timeout_s=settings.webhook_timeout_s,
        max_connections=settings.webhook_concurrency,
        allow_private=settings.webhook_allow_private,
        tracer_provider=tracing,
    )
    # The operator's own alert URL may be internal: its client has no SSRF guard.
    ops_transport = deps.transport or HttpxTransport(
        timeout_s=settings.webhook_timeout_s, max_connections=2, tracer_provider=tracing
    )

    outboxes = [
        RedisOutbox(
            redis,
            keys.outbox(shard),
            consumer=settings.notifier_consumer,
            batch=settings.relay_batch,
            block_ms=settings.relay_block_ms,
            claim_idle_ms=settings.relay_claim_idle_ms,
        )
        for shard in keys.all_shards
    ]
    publisher = RabbitPublisher(broker, service)
    tenant_streams = RedisTenantStreams(
        redis, keys, maxlen=settings.tenant_events_maxlen, retention_s=settings.job_retention_s
    )
    relay = ShardRelays(
        [
            Relay(
                outbox,
                tenant_streams,
                publisher,
                claim_every_s=max(settings.relay_claim_idle_ms / 2000, 0.01),
                trim_every_s=settings.relay_trim_interval_s,
                retry_after_failure_s=settings.relay_retry_s,
                name=f"outbox relay, shard {shard}",
            )
            for shard, outbox in zip(keys.all_shards, outboxes, strict=True)
        ]
    )
    deliveries = RedisDeliveryLog(redis, keys, retention_s=settings.job_retention_s)
    deliverer = Deliverer(
        transport=transport,
        signer=SecretsSigner(WebhookSecrets(redis, keys)),
        check_url=GuardedURLs(allow_private=settings.webhook_allow_private),
        delivery_log=deliveries,
        max_attempts=settings.max_webhook_attempts,
        max_retry_after_s=settings.webhook_max_retry_after_s,
        clock=deps.clock,
        tracing=DeliverySpans(tracing) if tracing is not None else None,
    )
    ops = (
        HttpOpsWebhook(
            ops_transport,
            settings.ops_webhook_url,
            secret=settings.ops_webhook_secret,
            clock=deps.clock,
        )
        if settings.ops_webhook_url
        else None
    )
    webhooks = handlers.subscribe(
        broker,
        service=service,
        tiers=settings.tiers,
        delivery_limit=settings.delivery_limit,
        concurrency=settings.webhook_concurrency,
        deliverer=deliverer,
        ops=ops,
    )

    async def prepare_broker() -> None:
        await broker.connect()
        await declare_notifier_topology(
            broker,
            service,
            settings.tiers,
            delivery_limit=settings.delivery_limit,
            alert_services=settings.alerting_services,
        )

    def give_up(reason: str) -> None:
        # Ends the process as SIGTERM would, then `serve_http` exits non-zero with this code.
        log.error("notifier giving up: not consuming webhook deliveries", reason=reason)
        app.state.exit_code = 1
        os.kill(os.getpid(), signal.SIGTERM)

    # The same watchdog as a worker's (`offload_runtime.watchdog`), on the webhook consumer.
    watchdog = watch_consumer(webhooks, prepare=prepare_broker, settings=settings, give_up=give_up)
    stalls = StallWatch(
        queues=[(topology.work_queue(name), name) for name in settings.alerting_services],
        counts=lambda queue: queue_counts(broker, queue),
        tracker=StallTracker(alert_after=timedelta(seconds=settings.stall_alert_after_s)),
        raise_alert=lambda alert: raise_stall_alert(alert, ops=ops),
        clock=utcnow,
        interval_s=settings.stall_check_interval_s,
    )
    hub = ShardedStreamHub(
        redis,
        keys,
        consumer=settings.notifier_consumer,
        block_ms=settings.sse_block_ms,
        queue_limit=settings.sse_queue_limit,
    )
    jobs = RedisJobs(redis, keys)
    slots = StreamSlots(settings.sse_max_streams_per_tenant)
    in_flight = InFlightReporter(redis, keys, topology.work_queue(service), lambda: webhooks.held)

    async def readiness() -> dict[str, bool]:
        async def redis_ok() -> bool:
            try:
                return bool(await redis.ping())
            except Exception:
                return False

        redis_up, broker_up = await asyncio.gather(redis_ok(), broker.ping(timeout=1.0))
        return {
            "broker": bool(broker_up),
            "redis": redis_up,
            "relay": relay.running and relay.healthy,
            "streams": hub.running,
            "webhooks": not watchdog.lost,
        }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(service, level=settings.log_level, fmt=settings.log_format)
        await check_shard_count(redis, keys)
        for outbox in outboxes:
            await outbox.ensure_group()
        await prepare_broker()
        await broker.start()
        watchdog.start()
        hub.start()
        relay.start()
        stalls.start()
        loop_lag.start()
        in_flight.start()
        log.info(
            "notifier started",
            consumer=settings.notifier_consumer,
            alert_services=list(settings.alerting_services),
        )
        try:
            yield
        finally:
            await loop_lag.stop()
            await stalls.stop()
            await relay.stop()
            # Before the broker stops the subscriber: a stopped consumer is not a lost one.
            await watchdog.stop()
            await broker.stop()
            await in_flight.stop()
            await hub.stop()
            if deps.transport is None:
                await transport.aclose()
                await ops_transport.aclose()
            if deps.redis is None:
                await redis.aclose()
            log.info("notifier stopped")

    # /docs from assets in the package, not a CDN (see the gateway).
    app = FastAPIOffline(
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
        title="Offload notifier",
        version="0.1.0",
        description="Job events as Server-Sent Events; signed webhooks; dead-letter alerts.",
        lifespan=lifespan,
    )
    install_problem_handlers(app, unavailable=(RedisError, RedisClusterException))
    telemetry.instrument_fastapi(app, tracing)
    app.include_router(
        build_router(
            RouteDeps(
                key_ring=settings.key_ring,
                keys=keys,
                streams=hub,
                snapshots=jobs,
                tenant_of_job=jobs.tenant_of,
                ping_s=settings.sse_ping_s,
                readiness=readiness,
                slots=slots,
            )
        )
    )
    app.state.exit_code = 0
    app.state.notifier = Notifier(
        settings=settings,
        keys=keys,
        redis=redis,
        broker=broker,
        relay=relay,
        hub=hub,
        outboxes=outboxes,
        deliveries=deliveries,
        slots=slots,
    )
    return app
