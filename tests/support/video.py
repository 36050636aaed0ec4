"""A video worker built by the service's own `build_app`, against a sandbox, for one test.

It runs in the run's RabbitMQ vhost (queue `video.jobs`) with its own Redis key
prefix, so each test only sees its own jobs; a message another test left behind
is skipped by the store (its job does not exist under this prefix) and acked.
"""

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from offload_contracts import VideoGenerateInput, VideoGenerateRequest
from offload_runtime.storage import FileStore
from offload_runtime.store import new_id
from offload_runtime.worker import Worker
from offload_video.app import VideoDeps, build_app
from offload_video.settings import VideoSettings
from tests.support.infra import Infra
from tests.support.rig import JobRig


class VideoRig(JobRig):
    """Submit `video.generate` jobs to a real video worker and watch what happens."""

    wait_timeout = 20

    def __init__(self, infra: Infra, sandbox_url: str, storage_dir: Path, **overrides: Any) -> None:
        self.infra = infra
        self.sandbox_url = sandbox_url
        values: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": f"{infra.redis_prefix}video-{uuid.uuid4().hex[:8]}:",
            "retry_tiers": "50ms,100ms",
            "storage_dir": storage_dir,
            "video_base_url": sandbox_url,
            "video_poll_initial_s": 0.02,
            "video_poll_max_s": 0.1,
            "concurrency": 4,
            "shutdown_grace_s": 1,
            "log_level": "warning",
        }
        values.update(overrides)
        self.settings = VideoSettings(**values)
        super().__init__(
            rabbitmq_url=infra.rabbitmq_url,
            redis_url=infra.redis_url,
            redis_prefix=self.settings.redis_prefix,
            name="video-test",
        )
        self.files = FileStore(storage_dir, self.redis, self.keys)
        self.http = httpx.AsyncClient(base_url=sandbox_url, timeout=10)
        self.worker: Worker | None = None

    async def start(self, deps: VideoDeps | None = None) -> Worker:
        """Start the worker (declaring the video topology) and the submitting broker."""
        self.worker = build_app(self.settings, deps)
        await self.worker.app.start()
        await self.open()
        return self.worker

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.app.stop()
        await self.http.aclose()
        await super().close()

    @property
    def partial_dir(self) -> Path:
        return self.files.scratch_dir / "video"

    async def submit(
        self,
        *,
        model: str = "sandbox",
        duration_s: int = 10,
        resolution: str = "1080p",
        max_attempts: int = 5,
    ) -> VideoGenerateRequest:
        """What the gateway does: record `waiting`, then publish with a confirm."""
        request = VideoGenerateRequest(
            id=new_id(),
            tenant="acme",
            max_attempts=max_attempts,
            created_at=datetime.now(UTC),
            input=VideoGenerateInput(
                prompt="a cat surfing at dawn",
                duration_s=duration_s,
                resolution=resolution,  # type: ignore[arg-type]
                model=model,
            ),
        )
        return await self.submit_request(request, routing_key="video.generate")

    async def renders(self, job_id: str) -> list[dict[str, Any]]:
        """The sandbox's counters for the renders submitted for this job."""
        answer = await self.http.get("/v1/sandbox/video/renders", params={"job": job_id})
        answer.raise_for_status()
        renders: list[dict[str, Any]] = answer.json()["renders"]
        return renders

    async def content(self, render_id: str) -> bytes:
        """The render's bytes, fetched straight from the sandbox (the expected file)."""
        answer = await self.http.get(f"/v1/videos/{render_id}/content")
        answer.raise_for_status()
        return answer.content
