"""The image service's settings: `OFFLOAD_*` environment variables (DESIGN §8)."""

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from offload_runtime.settings import WorkerSettings


def _cores() -> int:
    return os.cpu_count() or 1


class ImageSettings(WorkerSettings):
    """What the image worker reads from the environment, on top of `WorkerSettings`.

    `concurrency` (jobs held at once, = prefetch) defaults to twice the pool size:
    the next job is already fetched and waiting when a pool process frees up,
    without holding so many that queued jobs eat into their own timeout.
    """

    image_pool_size: int = Field(
        default_factory=_cores,
        ge=1,
        description="Pillow processes in the pool (default: the number of cores).",
    )
    image_pool_start_method: Literal["forkserver", "spawn"] = Field(
        default="forkserver",
        description="How pool processes start; never `fork` (the worker has threads).",
    )
    image_pool_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice increment of pool processes, so the event loop wins the CPU.",
    )
    image_max_pixels: int = Field(
        default=100_000_000,
        ge=1,
        description="Largest source or intermediate image in pixels (decompression bomb limit).",
    )
    image_max_source_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest source file or download in bytes."
    )
    image_download_connect_timeout_s: float = Field(
        default=5, gt=0, description="Connect timeout for source URLs (seconds)."
    )
    image_download_read_timeout_s: float = Field(
        default=15, gt=0, description="Timeout between two reads of a source URL (seconds)."
    )
    image_download_total_timeout_s: float = Field(
        default=30, gt=0, description="Whole download of a source URL, redirects included."
    )
    image_source_allow_private: bool | None = Field(
        default=None,
        description="Allow source URLs on loopback or private addresses; link-local and cloud "
        "metadata addresses stay refused. Unset: follows `webhook_allow_private`, the switch "
        "image shared with the notifier before it had its own.",
    )
    image_max_redirects: int = Field(
        default=3, ge=0, description="Redirects followed for a source URL, each hop re-checked."
    )

    @property
    def source_allow_private(self) -> bool:
        """Whether source URLs may point at loopback or private addresses."""
        if self.image_source_allow_private is None:
            return self.webhook_allow_private
        return self.image_source_allow_private

    @model_validator(mode="before")
    @classmethod
    def _concurrency_follows_pool(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("concurrency") is None:
            pool = data.get("image_pool_size") or _cores()
            data = {**data, "concurrency": 2 * int(pool)}
        return data
