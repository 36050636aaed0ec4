"""Wiring of the image worker: settings + adapters + handler → a runtime `Worker`."""

from dataclasses import dataclass

import httpx

from offload_contracts import IMAGE_PROCESS
from offload_image.adapters.outputs import StoredOutputs
from offload_image.adapters.pool import PipelinePool
from offload_image.adapters.sources import ImageSources
from offload_image.handlers import on_image_process
from offload_image.processing import ImageProcessor
from offload_image.settings import ImageSettings
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from offload_runtime.url_guard import guarded_transport
from offload_runtime.worker import Worker, build_worker

SERVICE = IMAGE_PROCESS.service


@dataclass(frozen=True)
class ImageDeps:
    """Adapters to use instead of the ones built from settings (tests pass some in).

    The worker owns whatever it is given: it starts the pool and closes all of
    them when it stops.
    """

    files: FileStore | None = None
    http: httpx.AsyncClient | None = None
    pool: PipelinePool | None = None


def source_client(settings: ImageSettings) -> httpx.AsyncClient:
    """The HTTP client for source URLs: it connects only to addresses the SSRF guard accepts."""
    return httpx.AsyncClient(
        transport=guarded_transport(allow_private=settings.source_allow_private),
        timeout=httpx.Timeout(
            settings.image_download_read_timeout_s,
            connect=settings.image_download_connect_timeout_s,
        ),
        follow_redirects=False,  # each hop is checked by the SSRF guard instead
        trust_env=False,  # no proxy or certificate settings picked up from the environment
    )


def build_app(settings: ImageSettings | None = None, deps: ImageDeps | None = None) -> Worker:
    """Build the image worker. No I/O happens until `worker.app` starts."""
    settings = settings or ImageSettings()
    deps = deps or ImageDeps()
    # One Redis client for the job store and the file store.
    redis = connect_redis(settings.redis_url)
    files = deps.files or FileStore(settings.storage_dir, redis, RedisKeys(settings.redis_prefix))
    http = deps.http or source_client(settings)
    pool = deps.pool or PipelinePool(
        size=settings.image_pool_size,
        scratch_dir=files.scratch_dir,
        max_pixels=settings.image_max_pixels,
        start_method=settings.image_pool_start_method,
        niceness=settings.image_pool_niceness,
    )
    processor = ImageProcessor(
        sources=ImageSources(
            files,
            http,
            max_bytes=settings.image_max_source_bytes,
            allow_private=settings.source_allow_private,
            max_redirects=settings.image_max_redirects,
            total_timeout_s=settings.image_download_total_timeout_s,
        ),
        renderer=pool,
        outputs=StoredOutputs(files),
    )

    async def stop() -> None:
        await pool.close()
        await http.aclose()

    return build_worker(
        service=SERVICE,
        settings=settings,
        handlers=[on_image_process(processor)],
        on_start=[pool.start],
        on_stop=[stop],
        redis=redis,
    )
