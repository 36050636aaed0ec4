"""Wiring of the gateway: settings → adapters → use cases → FastAPI app. No logic here."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from offload_gateway import metrics
from offload_gateway.adapters.broker import BrokerLink
from offload_gateway.adapters.redis_ports import (
    RedisIdempotency,
    RedisRateLimiter,
    RedisUnstartedIndex,
    StoreLedger,
)
from offload_gateway.admin import install_operations
from offload_gateway.body_limit import BodyLimit
from offload_gateway.deps import GatewayDeps
from offload_gateway.openapi import build_openapi
from offload_gateway.problems import install_problem_handlers
from offload_gateway.routes import files, health, jobs, secrets
from offload_gateway.settings import GatewaySettings
from offload_gateway.submission import JobSubmitter
from offload_gateway.sweep import Sweeper
from offload_runtime.keys import RedisKeys
from offload_runtime.listing import JobListing
from offload_runtime.logging import configure_logging, get_logger
from offload_runtime.loops import BackgroundLoop
from offload_runtime.redis import check_shard_count, connect_redis
from offload_runtime.storage import FileStore
from offload_runtime.store import JobStore, new_id
from offload_runtime.webhook_secrets import WebhookSecrets

log = get_logger("offload.gateway")

QUEUE_FULL_RETRY_AFTER_S = 5


def build_deps(settings: GatewaySettings) -> GatewayDeps:
    """Create every adapter and use case (no I/O until the app starts)."""
    # One quick retry: a client waiting on an outage should get its 503 promptly.
    client = connect_redis(settings.redis_url, retries=1)
    keys = RedisKeys(settings.redis_prefix, settings.redis_shards)
    catalog = settings.catalog
    store = JobStore(
        client,
        keys,
        retention_s=settings.job_retention_s,
        events_maxlen=settings.job_events_maxlen,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    broker = BrokerLink(
        settings.rabbitmq_url,
        tiers=settings.tiers,
        delivery_limit=settings.delivery_limit,
        publish_timeout_s=settings.publish_timeout_s,
        depth_refresh_s=settings.queue_depth_refresh_s,
        services=catalog.services,
        quorum_size=settings.rabbitmq_quorum_size,
    )
    ledger = StoreLedger(store, catalog)
    submitter = JobSubmitter(
        ledger=ledger,
        publisher=broker,
        idempotency=RedisIdempotency(client, keys, ttl_s=settings.idempotency_ttl_s),
        rate_limiter=RedisRateLimiter(client, keys, per_second=settings.rate_limit_per_s),
        jobs=ledger,
        queue_depth_limit=settings.queue_depth_limit,
        queue_full_retry_after=QUEUE_FULL_RETRY_AFTER_S,
        unavailable_retry_after=settings.unavailable_retry_after_s,
        catalog=catalog,
    )
    sweeper = Sweeper(
        index=RedisUnstartedIndex(store, client, keys),
        jobs=ledger,
        publisher=broker,
        after_s=settings.sweep_after_s,
        backoff_max_s=settings.sweep_backoff_max_s,
        interval_s=settings.sweep_interval_s,
        token=new_id(),
    )
    return GatewayDeps(
        settings=settings,
        redis=client,
        keys=keys,
        store=store,
        listing=JobListing(client, keys),
        files=FileStore(settings.storage_dir, client, keys),
        secrets=WebhookSecrets(client, keys),
        broker=broker,
        submitter=submitter,
        sweeper=sweeper,
        key_ring=settings.key_ring,
        catalog=catalog,
    )


def build_app(settings: GatewaySettings | None = None, deps: GatewayDeps | None = None) -> FastAPI:
    """The gateway's ASGI app. Starting it never waits for RabbitMQ (see `BrokerLink`)."""
    settings = settings or (deps.settings if deps else GatewaySettings())
    deps = deps or build_deps(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("gateway", level=settings.log_level, fmt=settings.log_format)
        await check_shard_count(deps.redis, deps.keys)
        deps.broker.start()

        async def sweep_once() -> None:
            metrics.SWEEP_REPUBLISHED.inc(await deps.sweeper.sweep_once())

        sweep = BackgroundLoop("unstarted-job sweep", sweep_once, settings.sweep_interval_s)
        sweep.start()
        log.info("gateway started", rate_limit_per_s=settings.rate_limit_per_s)
        try:
            yield
        finally:
            await sweep.stop()
            await deps.broker.stop()
            await deps.redis.aclose()
            log.info("gateway stopped")

    # /docs from assets in the package, not a CDN: it works offline and behind strict
    # firewalls. No validator badge (it loads from validator.swagger.io), and no /redoc
    # (its page still loads a logo from Redocly's CDN).
    app = FastAPIOffline(
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
        title="Offload",
        version="0.1.0",
        summary="Heavy work out of your web app: submit jobs, poll them, move files.",
        description="Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 "
        "problem details (`application/problem+json`). A job's events stream from the notifier, "
        "at the absolute URL in its `links.events`.",
        lifespan=lifespan,
    )
    app.state.deps = deps
    install_problem_handlers(app)
    app.add_middleware(metrics.RequestMetrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_bytes, exempt=(files.router.prefix,))
    for module in (jobs, files, secrets, health):
        app.include_router(module.router)
    install_operations(app, deps)  # /v1/admin/*, /dashboard, /asyncapi, tracing

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
