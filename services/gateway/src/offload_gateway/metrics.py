"""The gateway's Prometheus metrics (names start with `offload_gateway_`), and the request timer."""

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SUBMISSIONS = Counter(
    "offload_gateway_submissions_total",
    "Job submissions by type and outcome (accepted, replayed, rate_limited, queue_full, "
    "unavailable, conflict).",
    ["type", "outcome"],
)
SWEEP_REPUBLISHED = Counter(
    "offload_gateway_sweep_republished_total",
    "Jobs the sweep published again because they stayed waiting past the deadline.",
)
QUEUE_DEPTH = Gauge(
    "offload_gateway_queue_depth",
    "Ready messages in each work queue, as last read by the gateway.",
    ["queue"],
)
UPLOADED_BYTES = Counter(
    "offload_gateway_uploaded_bytes_total", "Bytes accepted by POST /v1/files."
)
REQUESTS = Histogram(
    "offload_gateway_request_duration_seconds",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class RequestMetrics:
    """Pure ASGI middleware: times each request, labelled by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label so a scanner cannot blow up the series.
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - began
            )
