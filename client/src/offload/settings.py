"""Where the client finds Offload: `OFFLOAD_URL`, `OFFLOAD_NOTIFIER_URL`, `OFFLOAD_API_KEY`.

Read by pydantic-settings, like every other Offload setting; arguments given to
`Offload(...)`, `AsyncOffload(...)` or the CLI's flags take precedence.
"""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """The client's configuration, from `OFFLOAD_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore")

    url: str = Field(default="http://127.0.0.1:8000", description="The gateway's base URL.")
    notifier_url: str | None = Field(
        default=None,
        description="The notifier's base URL, for SSE, when it is not where the jobs' "
        "`links.events` say (unset: follow the links); empty to always poll instead.",
    )
    api_key: str | None = Field(default=None, description="API key (a tenant's bearer token).")
    admin_key: str | None = Field(
        default=None, description="Admin key for `/v1/admin/*`; the API key when absent."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout in seconds.")

    @field_validator("api_key", "admin_key")
    @classmethod
    def _empty_is_absent(cls, value: str | None) -> str | None:
        # `OFFLOAD_API_KEY=` (empty) means "none", as an unset variable would.
        return value or None
