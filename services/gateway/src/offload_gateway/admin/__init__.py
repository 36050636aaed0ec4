"""Offload's operations surface on the gateway: admin API, dashboard, AsyncAPI, tracing.

`install_operations(app, deps)` is the one call the gateway's wiring makes.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from offload_contracts import topology
from offload_gateway.admin.amqp import AmqpQueues, BrokerRepublisher
from offload_gateway.admin.pages import build_pages
from offload_gateway.admin.redis_ports import (
    RedisActionLimiter,
    RedisAuditLog,
    RedisInFlight,
    RedisOutbox,
    StoreJobs,
)
from offload_gateway.admin.routes import on_refused, router
from offload_gateway.admin.service import AdminRefused, AdminService
from offload_gateway.admin.settings import AdminSettings
from offload_gateway.deps import GatewayDeps
from offload_runtime import telemetry
from offload_runtime.loops import BackgroundLoop
from offload_runtime.metrics import LoopLagSampler

__all__ = ["AdminSettings", "install_operations"]


def build_admin(
    deps: GatewayDeps,
    settings: AdminSettings | None = None,
    services: Sequence[str] | None = None,
) -> AdminService:
    """The admin service over the gateway's own Redis client and broker connection."""
    settings = settings or AdminSettings()
    queues = AmqpQueues(deps.broker.channel)
    keys = deps.keys
    return AdminService(
        queue_stats=queues,
        dead_letters=queues,
        in_flight=RedisInFlight(deps.redis, keys),
        republisher=BrokerRepublisher(deps.broker, timeout_s=deps.settings.publish_timeout_s),
        limiter=RedisActionLimiter(deps.redis, keys, per_minute=settings.admin_replay_per_minute),
        audit_log=RedisAuditLog(deps.redis, keys, maxlen=settings.admin_audit_maxlen),
        jobs=StoreJobs(deps.store, deps.listing),
        outbox=RedisOutbox(deps.redis, keys),
        settings=settings,
        services=tuple(services or (*deps.catalog.services, topology.NOTIFIER_SERVICE)),
        tiers=deps.settings.tiers,
        tenants=tuple(sorted(set(deps.key_ring.tenants_by_key.values()))),
        unavailable_retry_after=deps.settings.unavailable_retry_after_s,
    )


def install_operations(
    app: FastAPI,
    deps: GatewayDeps,
    *,
    settings: AdminSettings | None = None,
    services: Sequence[str] | None = None,
) -> AdminService:
    """Add `/v1/admin/*`, `/dashboard`, `/asyncapi`, queue gauges, loop lag and tracing.

    Tracing (FastAPI server spans, trace context on published messages) is
    installed only when it is configured (`OFFLOAD_OTLP_ENDPOINT`, or a
    provider given to `telemetry.use_tracer_provider`).
    """
    admin = build_admin(deps, settings, services)
    app.state.admin = admin
    app.add_exception_handler(AdminRefused, on_refused)
    provider = telemetry.tracer_provider_for(deps.settings, "gateway")
    telemetry.instrument_fastapi(app, provider)
    telemetry.instrument_broker(deps.broker.broker, provider)

    lag = LoopLagSampler()
    # Keeps the `offload_queue_*` gauges fresh between scrapes.
    gauges = BackgroundLoop(
        "admin queue stats", admin.refresh_gauges, admin.settings.queue_refresh_s
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        lag.start()
        gauges.start()
        try:
            yield
        finally:
            await gauges.stop()
            await lag.stop()

    operations = APIRouter(lifespan=lifespan)
    operations.include_router(router)
    operations.include_router(build_pages(deps.settings, deps.catalog))
    app.include_router(operations)
    return admin
