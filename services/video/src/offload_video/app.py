"""Wiring of the video worker: real or injected provider and storage, then the runtime's worker."""

import asyncio
from dataclasses import dataclass

from offload_contracts import VIDEO_GENERATE
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from offload_runtime.worker import Hook, Worker, build_worker
from offload_video.adapters.provider import HttpVideoProvider, build_client
from offload_video.adapters.storage import FileVideoStorage
from offload_video.generation import Sleep, VideoConfig, VideoGenerator, VideoProvider, VideoStorage
from offload_video.handlers import on_video_generate
from offload_video.settings import VideoSettings

SERVICE = VIDEO_GENERATE.service


@dataclass(frozen=True)
class VideoDeps:
    """Replacements for the real adapters (tests); what is None is built from settings."""

    provider: VideoProvider | None = None
    storage: VideoStorage | None = None
    sleep: Sleep | None = None


def build_app(settings: VideoSettings | None = None, deps: VideoDeps | None = None) -> Worker:
    """The video worker. No I/O happens until `worker.app` starts."""
    settings = settings or VideoSettings()
    deps = deps or VideoDeps()
    on_start: list[Hook] = []
    on_stop: list[Hook] = []
    # One Redis client for the job store and the file store.
    redis = connect_redis(settings.redis_url)

    provider = deps.provider
    if provider is None:
        api_key = settings.video_api_key.get_secret_value() if settings.video_api_key else None
        client = build_client(
            settings.video_base_url,
            api_key=api_key,
            timeout_s=settings.video_request_timeout_s,
            # Every running job may hold a download and a poll at once.
            max_connections=2 * settings.concurrency + 4,
        )
        provider = HttpVideoProvider(client)
        on_stop.append(client.aclose)

    storage = deps.storage
    if storage is None:
        files = FileStore(settings.storage_dir, redis, RedisKeys(settings.redis_prefix))
        local = FileVideoStorage(files, chunk_bytes=settings.video_chunk_bytes)

        async def sweep_partials() -> None:
            await local.sweep(settings.video_partial_max_age_s)

        on_start.append(sweep_partials)
        storage = local

    config = VideoConfig(
        default_model=settings.video_model,
        poll_initial_s=settings.video_poll_initial_s,
        poll_max_s=settings.video_poll_max_s,
        poll_factor=settings.video_poll_factor,
        max_bytes=settings.video_max_bytes,
    )
    generator = VideoGenerator(provider, storage, config, sleep=deps.sleep or asyncio.sleep)
    return build_worker(
        service=SERVICE,
        settings=settings,
        handlers=[on_video_generate(generator)],
        on_start=on_start,
        on_stop=on_stop,
        redis=redis,
    )
