"""The image worker's handler, as its `build_app` wires it, on FastStream's test broker.

A request names a stored source and a list of operations; the handler renders
it in the worker's process pool (one real process) and stores the output as
the tenant's file. The images are tiny, so this stays quick.
"""

import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from faststream.rabbit import TestRabbitBroker
from PIL import Image

from offload_contracts import (
    ImageProcessInput,
    ImageProcessRequest,
    JobRequestBase,
    JobStatus,
    topology,
)
from offload_image.adapters.pool import PipelinePool
from offload_image.app import ImageDeps, build_app
from offload_image.settings import ImageSettings
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from tests.support.component import ComponentRig
from tests.support.infra import Infra

TENANT = "acme"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def image_request(
    source: dict[str, Any], *operations: dict[str, Any]
) -> JobRequestBase[ImageProcessInput]:
    return ImageProcessRequest.model_validate(
        {
            "id": uuid.uuid4().hex,
            "tenant": TENANT,
            "max_attempts": 3,
            "created_at": datetime.now(UTC),
            "input": {"source": source, "operations": list(operations)},
        }
    )


@pytest.fixture
def settings(infra: Infra, tmp_path: Path) -> ImageSettings:
    return ImageSettings(
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=f"{infra.redis_prefix}image-component-{uuid.uuid4().hex[:8]}:",
        storage_dir=tmp_path,
        retry_tiers="1s,10s",
        log_level="warning",
    )


@pytest.fixture
async def files(settings: ImageSettings) -> AsyncIterator[FileStore]:
    """The worker's file store, where a test puts sources and finds outputs."""
    redis = connect_redis(settings.redis_url)
    yield FileStore(settings.storage_dir, redis, RedisKeys(settings.redis_prefix))
    await redis.aclose()


@pytest.fixture
async def image(settings: ImageSettings, files: FileStore) -> AsyncIterator[ComponentRig]:
    pool = PipelinePool(size=1, scratch_dir=files.scratch_dir, max_pixels=1_000_000)
    rig = ComponentRig(build_app(settings, ImageDeps(files=files, pool=pool)), service="image")
    await pool.start()
    try:
        async with TestRabbitBroker(rig.worker.broker):
            yield rig
    finally:
        await pool.close()
        await rig.store.aclose()


async def test_a_stored_png_is_resized_to_webp_and_stored_as_the_tenants_file(
    image: ComponentRig, files: FileStore
) -> None:
    source = await files.save_bytes(TENANT, png(64, 48), "image/png")

    request = await image.submit(
        image_request(
            {"file_id": source.id},
            {"op": "resize", "width": 32},
            {"op": "convert", "format": "webp"},
        )
    )

    record = await image.store.get(request.id)
    assert record is not None and record.status is JobStatus.COMPLETED, record
    assert record.result is not None
    assert (record.result["width"], record.result["height"]) == (32, 24)
    assert record.result["format"] == "webp" and record.result["files"] == []
    stored = await files.get(TENANT, record.result["file"]["id"])
    assert stored is not None
    with Image.open(stored.path) as output:
        assert (output.format, output.size) == ("WEBP", (32, 24))
    assert image.retried == [] and image.dead == []


async def test_a_missing_source_fails_the_job_at_once_and_parks_it(image: ComponentRig) -> None:
    request = await image.submit(
        image_request({"file_id": "nosuchfile"}, {"op": "resize", "width": 32})
    )

    record = await image.store.get(request.id)
    assert record is not None and record.status is JobStatus.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "permanent"
    assert "source file nosuchfile not found" in record.error.message
    [parked] = image.dead
    assert parked.headers[topology.HEADER_ERROR_TYPE] == "permanent"
    assert image.retried == []
