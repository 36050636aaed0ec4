"""Gateway settings: the runtime's `OFFLOAD_*` variables plus the gateway's own."""

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from offload_contracts.catalog import JobCatalog
from offload_runtime.settings import HttpServerSettings, RuntimeSettings, parse_duration_ms


class GatewaySettings(RuntimeSettings, HttpServerSettings):
    """What the gateway reads from the environment (README: "Gateway / HTTP API")."""

    gateway_host: str = Field(
        default="127.0.0.1", description="Address to listen on (`0.0.0.0` in a container)."
    )
    gateway_port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    job_specs: str = Field(
        default="",
        description="Job types of your own, beside Offload's: comma-separated `module:ATTRIBUTE` "
        "paths to `JobSpec`s, importable by the gateway (docs/add-a-workload.md).",
    )
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="Largest file `POST /v1/files` accepts."
    )
    max_json_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Largest JSON request body (job submissions, admin calls); past it, 413 "
        "before the body is read. Uploads have `max_upload_bytes`.",
    )
    rate_limit_per_s: int = Field(
        default=50,
        ge=0,
        description="Job submissions per second per tenant, in one-second windows (0: no limit).",
    )
    queue_depth_limit: int = Field(
        default=100_000,
        ge=0,
        description="Ready messages in a work queue past which submissions of its types get "
        "429 (0: no limit).",
    )
    queue_depth_refresh: str = Field(
        default="1s", description="How often queue depths are read (passive declares)."
    )
    publish_timeout_s: float = Field(
        default=5.0, gt=0, description="How long a submit waits for the broker's confirm."
    )
    unavailable_retry_after_s: int = Field(
        default=5, ge=1, description="`Retry-After` of a 503 when the broker is unreachable."
    )
    sweep_after: str = Field(
        default="5m",
        description="A job still waiting this long after acceptance is published again.",
    )
    sweep_backoff_max: str = Field(
        default="1h",
        description="Longest wait between two republications of a job still waiting: the "
        "wait doubles from `sweep_after` up to this (at least `sweep_after`).",
    )
    sweep_interval: str = Field(default="10s", description="How often the sweep runs.")
    idempotency_ttl_s: int = Field(
        default=24 * 3600, ge=1, description="How long an `Idempotency-Key` is remembered."
    )
    notifier_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="The notifier's port: the default `notifier_public_url` points at it.",
    )
    notifier_public_url: str | None = Field(
        default=None,
        description="Where clients reach the notifier (scheme, host, port, any path prefix); "
        "every job's `links.events` starts with it. Default `http://127.0.0.1:<notifier_port>`, "
        "right when clients run on the same machine (`make run`).",
    )

    @field_validator("notifier_public_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("job_specs")
    @classmethod
    def _specs_load(cls, value: str) -> str:
        # A typo fails at start-up, not at the first submission.
        JobCatalog.load([path for path in value.split(",") if path.strip()])
        return value

    @property
    def catalog(self) -> JobCatalog:
        """Offload's job types and the ones `job_specs` names (imported on each call)."""
        return JobCatalog.load([path for path in self.job_specs.split(",") if path.strip()])

    @property
    def notifier_base_url(self) -> str:
        """The start of every `links.events`: the notifier as clients reach it."""
        return self.notifier_public_url or f"http://127.0.0.1:{self.notifier_port}"

    @field_validator("queue_depth_refresh", "sweep_after", "sweep_backoff_max", "sweep_interval")
    @classmethod
    def _duration_parses(cls, value: str) -> str:
        parse_duration_ms(value)
        return value

    @model_validator(mode="after")
    def _backoff_reaches_the_first_wait(self) -> "GatewaySettings":
        if self.sweep_backoff_max_s < self.sweep_after_s:
            raise ValueError(
                f"sweep_backoff_max ({self.sweep_backoff_max}) must be at least "
                f"sweep_after ({self.sweep_after}): the wait between republications only grows"
            )
        return self

    @property
    def sweep_after_s(self) -> float:
        return parse_duration_ms(self.sweep_after) / 1000

    @property
    def sweep_backoff_max_s(self) -> float:
        return parse_duration_ms(self.sweep_backoff_max) / 1000

    @property
    def sweep_interval_s(self) -> float:
        return parse_duration_ms(self.sweep_interval) / 1000

    @property
    def queue_depth_refresh_s(self) -> float:
        return parse_duration_ms(self.queue_depth_refresh) / 1000
