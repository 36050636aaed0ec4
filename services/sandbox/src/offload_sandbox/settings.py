"""Sandbox provider settings (`OFFLOAD_SANDBOX_*`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    """Latency and size knobs for the local stand-in providers."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    sandbox_port: int = Field(default=8002, description="Port the sandbox listens on.")
    sandbox_host: str = Field(default="127.0.0.1", description="Interface to bind.")
