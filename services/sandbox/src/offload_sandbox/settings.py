"""Sandbox provider settings (`OFFLOAD_SANDBOX_*`)."""

from pydantic import Field

from offload_runtime.settings import HttpServerSettings


class SandboxSettings(HttpServerSettings):
    """Latency and size knobs for the local stand-in providers."""

    sandbox_port: int = Field(default=8002, description="Port the sandbox listens on.")
    sandbox_host: str = Field(default="127.0.0.1", description="Interface to bind.")

    # The LLM (`llm.py`): pace and length of the generated answers.
    sandbox_llm_ttft_ms: float = Field(
        default=300, ge=0, description="LLM: time to first token, in milliseconds."
    )
    sandbox_llm_tokens_per_s: float = Field(
        default=50, gt=0, description="LLM: tokens streamed per second after the first."
    )
    sandbox_llm_answer_tokens: int = Field(
        default=200,
        ge=1,
        description="LLM: natural answer length in tokens (±25%, whole sentences), "
        "before max_tokens cuts it.",
    )
    sandbox_llm_retry_after_s: float = Field(
        default=1, ge=0, description="LLM: the Retry-After of `sandbox-ratelimit-N` answers."
    )
    sandbox_llm_tracked_jobs: int = Field(
        default=10_000, ge=1, description="LLM: jobs whose calls are remembered (oldest dropped)."
    )

    # The video provider (`video.py`): render time, file size, failure knobs.
    sandbox_video_render_s: float = Field(
        default=10, ge=0, description="Video: how long a render takes, in seconds."
    )
    sandbox_video_render_s_per_video_s: float = Field(
        default=0,
        ge=0,
        description="Video: render seconds added per second of video (longer videos take longer).",
    )
    sandbox_video_bytes_per_second: int = Field(
        default=1_000_000,
        ge=1,
        description="Video: file bytes per second of 1080p video (480p ¼, 720p ½, 4k 4×).",
    )
    sandbox_video_max_bytes: int = Field(
        default=4 * 1024**3, ge=1, description="Video: larger renders are refused with a 400."
    )
    sandbox_video_retry_after_s: float = Field(
        default=1, ge=0, description="Video: the Retry-After of `sandbox-fail-N` answers."
    )
    sandbox_video_drop_first_download_at: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Video: break every render's first download after this fraction of it.",
    )
    sandbox_video_api_key: str | None = Field(
        default=None, description="Video: when set, requests must carry `Bearer <this key>`."
    )
    sandbox_video_download_bytes_per_second: int | None = Field(
        default=None,
        ge=1,
        description="Video: cap each download at this rate (unlimited when unset).",
    )
