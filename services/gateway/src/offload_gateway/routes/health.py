"""Liveness, readiness and metrics."""

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from offload_contracts.api import Readiness
from offload_gateway import metrics
from offload_gateway.deps import Deps

router = APIRouter(tags=["health"])

REDIS_PING_TIMEOUT_S = 1.0


@router.get("/healthz", summary="Liveness", response_model=dict[str, str])
async def healthz() -> dict[str, str]:
    """The process answers; says nothing about its dependencies (see `/readyz`)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Readiness,
    responses={503: {"description": "Not ready: a dependency is unreachable.", "model": Readiness}},
)
async def readyz(deps: Deps) -> Response:
    """Ready when RabbitMQ is connected and Redis answers; 503 otherwise."""
    broker = deps.broker.connected
    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
            redis = bool(await deps.redis.ping())
    except Exception:
        redis = False
    view = Readiness(ready=broker and redis, broker=broker, redis=redis)
    return Response(
        view.model_dump_json(),
        status_code=200 if view.ready else 503,
        media_type="application/json",
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(deps: Deps) -> Response:
    for service, depth in deps.broker.depths.items():
        metrics.QUEUE_DEPTH.labels(f"{service}.jobs").set(depth)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
