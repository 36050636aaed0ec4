"""Partial downloads on disk and their adoption into the FileStore (real Redis)."""

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offload_runtime.errors import TransientError
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from offload_video.adapters.storage import FileVideoStorage
from tests.support.infra import Infra


@pytest.fixture
async def storage(infra: Infra, tmp_path: Path) -> AsyncIterator[FileVideoStorage]:
    client = connect_redis(infra.redis_url)
    keys = RedisKeys(f"{infra.redis_prefix}vstore-{uuid.uuid4().hex[:8]}:")
    yield FileVideoStorage(FileStore(tmp_path, client, keys), chunk_bytes=64 * 1024)
    await client.aclose()


async def test_a_reopened_partial_keeps_its_bytes_and_its_hash(storage: FileVideoStorage) -> None:
    first, second = os.urandom(100_000), os.urandom(150_000)
    async with storage.open_partial("job-a") as partial:
        await partial.append(first)
        assert partial.size == len(first)
    # The attempt ended (a dropped download): what arrived is on disk.
    assert storage.partial_path("job-a").stat().st_size == len(first)

    async with storage.open_partial("job-a") as partial:
        assert partial.size == len(first)
        for at in range(0, len(second), 10_000):
            await partial.append(second[at : at + 10_000])
        assert await partial.digest() == hashlib.sha256(first + second).hexdigest()
        ref = await partial.commit("acme", "video/mp4")

    assert not storage.partial_path("job-a").exists()
    assert ref.bytes == len(first + second)
    assert ref.sha256 == hashlib.sha256(first + second).hexdigest()
    assert await storage.find("acme", ref.id) == ref
    assert await storage.find("someone-else", ref.id) is None


async def test_only_one_attempt_holds_a_jobs_partial_file(storage: FileVideoStorage) -> None:
    async with storage.open_partial("job-b"):
        with pytest.raises(TransientError, match="another attempt"):
            async with storage.open_partial("job-b"):
                pass
    async with storage.open_partial("job-b") as partial:  # released with the first
        assert partial.size == 0


async def test_restart_empties_the_partial_file(storage: FileVideoStorage) -> None:
    async with storage.open_partial("job-c") as partial:
        await partial.append(b"x" * 200_000)
        await partial.restart()
        await partial.append(b"fresh")
        assert await partial.digest() == hashlib.sha256(b"fresh").hexdigest()
    assert storage.partial_path("job-c").read_bytes() == b"fresh"


async def test_discard_and_sweep_remove_partial_files(storage: FileVideoStorage) -> None:
    for job in ("old", "new", "gone"):
        async with storage.open_partial(job) as partial:
            await partial.append(b"data")
    day_ago = time.time() - 86_400
    await asyncio.to_thread(os.utime, storage.partial_path("old"), (day_ago, day_ago))

    await storage.discard_partial("gone")
    await storage.discard_partial("never-existed")
    removed = await storage.sweep(max_age_s=3600)

    assert removed == 1
    assert sorted(p.name for p in storage.partial_dir.iterdir()) == ["new.part"]
