"""Settings of the operations surface (admin API, dashboard), read from `OFFLOAD_*`.

Kept apart from `GatewaySettings` so the admin surface can be tuned (or
tested) on its own; `install_operations` reads them when none are given.
"""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from offload_runtime.settings import parse_duration_ms


class AdminSettings(BaseSettings):
    """Limits and refresh rates of `/v1/admin/*` (README: "Operations")."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    admin_replay_per_minute: int = Field(
        default=10,
        ge=1,
        description="Replay and purge calls one admin key may make per minute (then 429).",
    )
    admin_replay_batch: int = Field(
        default=500, ge=1, le=10_000, description="Dead letters one replay call acts on at most."
    )
    admin_scan_limit: int = Field(
        default=10_000,
        ge=1,
        description="Dead letters one browse or replay-by-id call reads at most.",
    )
    admin_browse_limit: int = Field(
        default=200, ge=1, le=1000, description="Largest page of `GET /v1/admin/dead-letters`."
    )
    admin_queue_refresh: str = Field(
        default="5s",
        description="How often queue depths and consumers are read for the `offload_queue_*` "
        "gauges.",
    )
    admin_audit_maxlen: int = Field(
        default=10_000, ge=10, description="Entries kept in the admin audit stream."
    )

    @field_validator("admin_queue_refresh")
    @classmethod
    def _duration_parses(cls, value: str) -> str:
        parse_duration_ms(value)
        return value

    @property
    def queue_refresh_s(self) -> float:
        return parse_duration_ms(self.admin_queue_refresh) / 1000
