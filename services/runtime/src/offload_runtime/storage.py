"""File storage: bytes in a directory (a shared volume in compose), metadata in Redis.

Uploads and job outputs are streamed to disk with the SHA-256 computed on the
way, off the event loop; Redis holds only the reference (DESIGN §4). A file
belongs to one tenant: another tenant asking for it gets nothing, as if it did
not exist.
"""

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

from offload_contracts import FileRef
from offload_runtime.keys import RedisKeys
from offload_runtime.store import new_id

CHUNK = 1024 * 1024


class FileTooLarge(Exception):
    """The upload or download passed the configured size limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"file exceeds the limit of {limit} bytes")
        self.limit = limit


class StoredFile(FileRef):
    """A file's reference plus where it lives and who owns it."""

    tenant: str
    path: str
    created_at: datetime


class _Sink:
    """A temp file and a running hash, written from a worker thread."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.file = os.fdopen(fd, "wb")
        self.path = Path(name)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class FileStore:
    """Tenant-scoped files under `root`, described in Redis."""

    def __init__(self, root: Path, client: "aioredis.Redis", keys: RedisKeys) -> None:
        self.root = root
        self._client = client
        self._keys = keys

    def path_of(self, file_id: str) -> Path:
        return self.root / file_id[:2] / file_id

    @property
    def scratch_dir(self) -> Path:
        """Where producers write before `adopt` (same filesystem, so adoption is a rename)."""
        return self.root / ".scratch"

    async def save_stream(
        self,
        tenant: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        *,
        max_bytes: int,
    ) -> StoredFile:
        """Stream chunks to disk, hashing as they come; refuse past `max_bytes`."""
        sink = await asyncio.to_thread(_Sink, self.scratch_dir)
        try:
            buffered: list[bytes] = []
            buffered_size = 0
            async for chunk in chunks:
                if sink.size + buffered_size + len(chunk) > max_bytes:
                    raise FileTooLarge(max_bytes)
                buffered.append(chunk)
                buffered_size += len(chunk)
                if buffered_size >= CHUNK:  # one thread hop per MiB, not per network read
                    await asyncio.to_thread(sink.write, b"".join(buffered))
                    buffered, buffered_size = [], 0
            if buffered:
                await asyncio.to_thread(sink.write, b"".join(buffered))
            await asyncio.to_thread(sink.close)
        except BaseException:
            await asyncio.to_thread(sink.discard)
            raise
        return await self._register(
            tenant, sink.path, sink.size, sink.hash.hexdigest(), content_type
        )

    async def save_bytes(self, tenant: str, data: bytes, content_type: str) -> StoredFile:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.save_stream(tenant, one(), content_type, max_bytes=len(data))

    async def adopt(
        self, tenant: str, path: Path, content_type: str, *, sha256: str | None = None
    ) -> StoredFile:
        """Take ownership of a file a producer already wrote under `scratch_dir`."""
        if sha256 is None:
            sha256 = await asyncio.to_thread(_sha256_of, path)
        size = (await asyncio.to_thread(path.stat)).st_size
        return await self._register(tenant, path, size, sha256, content_type)

    async def get(self, tenant: str, file_id: str) -> StoredFile | None:
        """The file if it exists and belongs to `tenant`; otherwise None."""
        if not _valid_id(file_id):
            return None
        data: dict[str, str] = await self._client.hgetall(self._keys.file(file_id))  # type: ignore[assignment]
        if not data or data.get("tenant") != tenant:
            return None
        return StoredFile.model_validate(data)

    async def delete(self, file_id: str) -> None:
        if not _valid_id(file_id):
            return
        await self._client.delete(self._keys.file(file_id))
        await asyncio.to_thread(self.path_of(file_id).unlink, True)

    async def _register(
        self, tenant: str, temp: Path, size: int, sha256: str, content_type: str
    ) -> StoredFile:
        file_id = new_id()
        final = self.path_of(file_id)
        await asyncio.to_thread(_move, temp, final)
        stored = StoredFile(
            id=file_id,
            url=f"/v1/files/{file_id}",
            bytes=size,
            sha256=sha256,
            content_type=content_type,
            tenant=tenant,
            path=str(final),
            created_at=datetime.now(UTC),
        )
        await self._client.hset(
            self._keys.file(file_id),
            mapping={k: str(v) for k, v in stored.model_dump(mode="json").items()},
        )
        return stored


def _valid_id(file_id: str) -> bool:
    return 0 < len(file_id) <= 64 and all(c.isalnum() or c in "-_" for c in file_id)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_ref(stored: StoredFile) -> FileRef:
    """The public part of a stored file, for results and API answers."""
    return FileRef(
        id=stored.id,
        url=stored.url,
        bytes=stored.bytes,
        sha256=stored.sha256,
        content_type=stored.content_type,
    )
