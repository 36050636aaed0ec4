"""Settings shared by every service: `OFFLOAD_*` environment variables (DESIGN §8).

Nothing else in Offload reads `os.environ`; each service subclasses
`RuntimeSettings` with its own fields.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from offload_runtime.auth import KeyRing, parse_admin_keys, parse_api_keys
from offload_runtime.keys import DEFAULT_SHARDS

_PROJECT_VAR = Path(__file__).resolve().parents[4] / "var"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


@dataclass(frozen=True, slots=True)
class RetryTier:
    """One delayed-retry queue: its name (`30s`) and its delay."""

    name: str
    delay_ms: int

    @property
    def delay_s(self) -> float:
        return self.delay_ms / 1000


def parse_duration_ms(text: str) -> int:
    """`"30s"` → 30000; `"50ms"` → 50; `"2m"`, `"1h"` likewise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 50ms, 30s, 2m, 1h)")
    value, unit = match.groups()
    ms = int(float(value) * _UNIT_MS[unit])
    if ms <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return ms


def parse_retry_tiers(text: str) -> tuple[RetryTier, ...]:
    """`"30s,2m,10m,1h"` → the tiers, shortest first."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("OFFLOAD_RETRY_TIERS needs at least one duration")
    tiers = tuple(RetryTier(name, parse_duration_ms(name)) for name in names)
    return tuple(sorted(tiers, key=lambda tier: tier.delay_ms))


def parse_rabbitmq_nodes(text: str) -> tuple[str, ...]:
    """`OFFLOAD_RABBITMQ_URL` → one AMQP URL per node.

    One URL names one node; several, comma-separated, name the nodes of one
    cluster (`amqp://u:p@rabbit-1:5672/vh,amqp://u:p@rabbit-2:5672/vh`): the
    same vhost on each. Errors never quote a URL (it may hold a password).
    """
    nodes = tuple(part.strip() for part in text.split(",") if part.strip())
    if not nodes:
        raise ValueError("OFFLOAD_RABBITMQ_URL is empty")
    vhosts = set()
    for index, node in enumerate(nodes, start=1):
        where = (
            f"node {index} of OFFLOAD_RABBITMQ_URL" if len(nodes) > 1 else "OFFLOAD_RABBITMQ_URL"
        )
        try:
            parts = urlsplit(node)
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"{where} is not a valid URL: {exc}") from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(
                f"{where} is not an AMQP URL: expected amqp://user:password@host:port/vhost "
                "(several nodes of one cluster: comma-separated URLs)"
            )
        vhosts.add(parts.path.strip("/") or "/")
    if len(vhosts) > 1:
        raise ValueError(
            "the nodes of OFFLOAD_RABBITMQ_URL name different vhosts; one cluster, one vhost"
        )
    return nodes


class LogSettings(BaseSettings):
    """How a process logs: every Offload process reads these, the sandbox included."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    log_level: str = Field(default="info", description="debug, info, warning, error.")
    log_format: str = Field(default="json", description="`json` lines, or `console` for humans.")


class HttpServerSettings(LogSettings):
    """What a process that serves HTTP reads: the gateway, the notifier and the sandbox."""

    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection whose request line and headers are not all received this "
        "long after their first byte (or after connecting) is answered 408 and closed "
        "(slow-header clients). Bodies and responses are not bounded by it.",
    )
    http_max_header_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Largest request line plus headers, in bytes; past it, 431 and the "
        "connection is closed.",
    )


class RuntimeSettings(LogSettings):
    """What every Offload service reads from the environment (the sandbox aside)."""

    rabbitmq_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL; for a cluster, one URL per node, comma-separated (a "
        "connection moves to the next node when its node goes away).",
    )
    rabbitmq_quorum_size: int | None = Field(
        default=None,
        ge=1,
        description="Replicas of each quorum queue (`x-quorum-initial-group-size`), set when "
        "the queue is first declared. Unset: the number of nodes in OFFLOAD_RABBITMQ_URL "
        "when it names several, and RabbitMQ's own default for one.",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL.")
    redis_prefix: str = Field(
        default="", description="Prefix for every Redis key (isolates test runs)."
    )
    redis_shards: int = Field(
        default=DEFAULT_SHARDS,
        ge=1,
        # A `GET /v1/events` id names a position per shard: 256 keep it a few KiB.
        le=256,
        description="Logical shards of job state (fixed when a deployment is created).",
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Wait until this many replicas of a job's Redis master hold each of its "
        "state changes (`WAIT`) before going on: the gateway answers 202 only then (else 503 "
        "and the job is not accepted), a worker acks only then (else the message goes back "
        "to its queue). Closes the window in which a failover loses an acknowledged write. "
        "0: off; never more than the replicas each master has.",
    )
    redis_wait_timeout_ms: int = Field(
        default=500,
        ge=1,
        description="How long one state change waits for those replicas.",
    )
    retry_tiers: str = Field(
        default="30s,2m,10m,1h", description="Delay tiers, comma-separated durations."
    )
    delivery_limit: int = Field(
        default=5, ge=1, description="Redeliveries before RabbitMQ parks a message as poison."
    )
    storage_dir: Path = Field(default=_PROJECT_VAR / "storage", description="File storage root.")
    job_retention_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long finished jobs are kept."
    )
    job_events_maxlen: int = Field(
        default=1000, ge=10, description="Cap on each job's event stream."
    )
    api_keys: str = Field(
        default="dev-key=dev", description="API keys: comma-separated `key=tenant` pairs."
    )
    admin_keys: str = Field(default="dev-admin-key", description="Admin keys, comma-separated.")
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook/source URLs on loopback or private addresses; link-local "
        "and cloud metadata addresses stay refused.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector (OTLP over HTTP, e.g. `http://127.0.0.1:4318`): "
        "when set, traces are exported there; when unset, tracing is off.",
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces sampled when tracing is on."
    )

    @field_validator("retry_tiers")
    @classmethod
    def _tiers_parse(cls, value: str) -> str:
        parse_retry_tiers(value)
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _rabbitmq_nodes_parse(cls, value: str) -> str:
        parse_rabbitmq_nodes(value)
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @property
    def tiers(self) -> tuple[RetryTier, ...]:
        return parse_retry_tiers(self.retry_tiers)

    @property
    def key_ring(self) -> KeyRing:
        return KeyRing(parse_api_keys(self.api_keys), parse_admin_keys(self.admin_keys))


class ConsumerWatchSettings(LogSettings):
    """The consumer watchdog's settings: every process with a retrying consumer reads them
    (the workers, and the notifier for its webhook deliveries)."""

    consumer_check_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the consumer watchdog asks RabbitMQ whether this process's "
        "subscription is live.",
    )
    consumer_give_up_s: float = Field(
        default=60.0,
        gt=0,
        description="A process still not consuming this long after the watchdog found it so "
        "exits non-zero, for its supervisor to restart it.",
    )


class WorkerSettings(RuntimeSettings, ConsumerWatchSettings):
    """Settings of a worker service (ai, research, video, image)."""

    concurrency: int = Field(
        default=16, ge=1, description="Jobs one process runs at once (= prefetch)."
    )
    job_timeout_s: float | None = Field(
        default=None, gt=0, description="Override the job type's timeout (seconds)."
    )
    shutdown_grace_s: float = Field(
        default=30, ge=0, description="On SIGTERM, how long in-flight jobs may take to finish."
    )
    redis_outage_wait_s: float = Field(
        default=300,
        ge=0,
        description="How long a job's state change waits for Redis to come back (message unacked).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this port (unset: "
        "not served; 0: any free port).",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of `/metrics` (`0.0.0.0` in a container)."
    )
    broker_metrics: bool = Field(
        default=False,
        description="Add FastStream's Prometheus middleware (`offload_broker_*` per-message "
        "metrics); costs hot-path CPU, see the README.",
    )
