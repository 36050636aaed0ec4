"""Notifier settings: the runtime's `OFFLOAD_*` variables plus the notifier's own."""

import os
import socket
import uuid

from pydantic import Field

from offload_contracts import topology
from offload_runtime.settings import ConsumerWatchSettings, HttpServerSettings, RuntimeSettings

MAX_BLOCK_MS = 4000
"""Blocking Redis reads must end before redis-py's socket timeout (5 s) cuts them off."""


def _consumer_name() -> str:
    # Unique per process: a restarted notifier must not inherit a dead one's
    # pending entries by name; those are taken over by XAUTOCLAIM instead.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class NotifierSettings(RuntimeSettings, HttpServerSettings, ConsumerWatchSettings):
    """What the notifier reads from the environment (README: "Notifier: SSE and webhooks")."""

    notifier_host: str = Field(
        default="127.0.0.1", description="Address to listen on (`0.0.0.0` in a container)."
    )
    notifier_port: int = Field(default=8001, ge=0, le=65535, description="Port to listen on.")
    notifier_service: str = Field(
        default=topology.NOTIFIER_SERVICE,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Name of the notifier's queues: `<name>.jobs` (webhook deliveries), "
        "`<name>.retry.<tier>`, `<name>.dead`, `<name>.dead-alerts`.",
    )
    notifier_consumer: str = Field(
        default_factory=_consumer_name,
        description="This process's consumer name in the outbox's consumer group.",
    )
    alert_services: str = Field(
        default="",
        description="Services whose dead queues raise alerts, comma-separated "
        "(default: every worker service and the notifier itself).",
    )
    redis_max_connections: int = Field(
        default=64,
        ge=4,
        description="Redis connections one process uses at most; callers beyond wait their turn.",
    )
    # ---- outbox relay
    relay_batch: int = Field(default=200, ge=1, description="Outbox entries relayed per batch.")
    relay_block_ms: int = Field(
        default=1000,
        ge=1,
        le=MAX_BLOCK_MS,
        description="How long one outbox read waits for new entries.",
    )
    relay_claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="An outbox entry pending this long (its notifier died) is claimed by another.",
    )
    relay_trim_interval_s: float = Field(
        default=5.0, gt=0, description="How often acknowledged outbox entries are trimmed."
    )
    relay_retry_s: float = Field(
        default=1.0, gt=0, description="Pause after a failed batch (broker or Redis down)."
    )
    tenant_events_maxlen: int = Field(
        default=10_000,
        ge=10,
        description="Cap on each tenant's event stream of one shard (`GET /v1/events`).",
    )
    # ---- SSE
    sse_ping_s: float = Field(default=15.0, gt=0, description="Seconds between `: ping` lines.")
    sse_block_ms: int = Field(
        default=2000,
        ge=10,
        le=MAX_BLOCK_MS,
        description="How long the shared stream reader blocks per read when nothing is new.",
    )
    sse_max_streams_per_tenant: int = Field(
        default=200,
        ge=1,
        description="SSE streams one tenant may hold open at once on one notifier process; "
        "the next gets 429 with Retry-After. Per process: with N replicas a tenant may hold "
        "up to N times this.",
    )
    sse_queue_limit: int = Field(
        default=1000,
        ge=10,
        description="Events buffered for one slow SSE client before it re-reads from Redis.",
    )
    # ---- webhooks
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="Time limit of one webhook request."
    )
    webhook_max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Attempts before a delivery goes to the dead queue "
        "(default: one per retry tier, plus the first).",
    )
    webhook_concurrency: int = Field(
        default=64, ge=1, description="Webhook requests one process makes at once (= prefetch)."
    )
    webhook_max_retry_after_s: float = Field(
        default=24 * 3600, gt=0, description="Longest receiver `Retry-After` honoured."
    )
    ops_webhook_url: str | None = Field(
        default=None,
        description="Operations webhook: POSTed a JSON alert for every dead letter and every "
        "stalled work queue.",
    )
    stall_alert_after_s: float = Field(
        default=60.0,
        gt=0,
        description="Alert when a work queue has had messages ready and no consumer this long.",
    )
    stall_check_interval_s: float = Field(
        default=10.0, gt=0, description="How often work queues are checked for stalls."
    )
    ops_webhook_secret: str | None = Field(
        default=None,
        description="`whsec_…` secret to sign operations alerts with (Standard Webhooks).",
    )

    @property
    def max_webhook_attempts(self) -> int:
        return self.webhook_max_attempts or len(self.tiers) + 1

    @property
    def alerting_services(self) -> tuple[str, ...]:
        named = tuple(name.strip() for name in self.alert_services.split(",") if name.strip())
        return named or (*topology.WORKER_SERVICES, self.notifier_service)
