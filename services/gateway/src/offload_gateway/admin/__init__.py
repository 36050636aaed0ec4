"""Offload's operations surface on the gateway: admin API, dashboard, AsyncAPI, tracing.

`install_operations(app, deps)` is the one call the gateway's wiring makes.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

from fastapi import APIRouter, FastAPI

from offload_contracts import topology
from offload_gateway.admin.pages import build_pages
from offload_gateway.admin.routes import Operations, build_router
from offload_gateway.admin.settings import AdminSettings
from offload_gateway.deps import GatewayDeps
from offload_runtime import telemetry
from offload_runtime.metrics import LoopLagSampler
from offload_runtime.queues import QueueOps

__all__ = ["AdminSettings", "install_operations"]


def install_operations(
    app: FastAPI,
    deps: GatewayDeps,
    *,
    settings: AdminSettings | None = None,
    services: Sequence[str] | None = None,
) -> Operations:
    """Add `/v1/admin/*`, `/dashboard`, `/asyncapi`, queue gauges, loop lag and tracing.

    Tracing (FastAPI server spans, trace context on published messages) is
    installed only when it is configured (`OFFLOAD_OTLP_ENDPOINT`, or a
    provider given to `telemetry.use_tracer_provider`).
    """
    ops = Operations(
        deps=deps,
        settings=settings or AdminSettings(),
        queues=QueueOps(deps.settings.rabbitmq_url, connection_name="offload-gateway-admin"),
        services=tuple(services or (*topology.WORKER_SERVICES, topology.NOTIFIER_SERVICE)),
    )
    provider = telemetry.tracer_provider_for(deps.settings, "gateway")
    telemetry.instrument_fastapi(app, provider)
    telemetry.instrument_broker(deps.broker.broker, provider)

    lag = LoopLagSampler()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        lag.start()
        refresher = ops.gauge_refresher()
        refresher.start()
        try:
            yield
        finally:
            await refresher.stop()
            await lag.stop()
            # Bounded: a broker that stopped answering must not hold the shutdown.
            with suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ops.queues.close()

    operations = APIRouter(lifespan=lifespan)
    operations.include_router(build_router(ops))
    operations.include_router(build_pages(deps.settings))
    app.include_router(operations)
    return ops
