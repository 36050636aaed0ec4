"""Video service settings: the worker's, plus the provider and the download (`OFFLOAD_VIDEO_*`)."""

from pydantic import Field, SecretStr

from offload_runtime.settings import WorkerSettings


class VideoSettings(WorkerSettings):
    """What the video worker reads from the environment (DESIGN §8)."""

    video_base_url: str = Field(
        default="http://127.0.0.1:8002",
        description="The video provider's base URL (the sandbox by default).",
    )
    video_api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer` to the provider."
    )
    video_model: str = Field(
        default="sandbox", description="Provider model when the job does not name one."
    )
    video_poll_initial_s: float = Field(
        default=2.0, gt=0, description="First wait between status polls of a render."
    )
    video_poll_max_s: float = Field(
        default=15.0, gt=0, description="Longest wait between polls (the backoff's cap)."
    )
    video_poll_factor: float = Field(
        default=1.5, ge=1, description="Each wait is the previous one times this, up to the cap."
    )
    video_chunk_bytes: int = Field(
        default=1024 * 1024,
        ge=16 * 1024,
        description="Bytes buffered before each write to the partial file.",
    )
    video_request_timeout_s: float = Field(
        default=30.0, gt=0, description="Connect/read timeout of each provider request."
    )
    video_max_bytes: int = Field(
        default=8 * 1024**3, ge=1, description="A video announced larger than this fails."
    )
    video_partial_max_age_s: float = Field(
        default=2 * 24 * 3600,
        gt=0,
        description="Partial downloads untouched this long are removed at start-up.",
    )
