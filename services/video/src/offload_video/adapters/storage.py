"""Partial downloads on disk, then adopted into the runtime's `FileStore`.

A job's partial file is `<storage>/.scratch/video/<job id>.part`: on the storage
volume, so a retry on another replica finds it, and adoption is a rename. Writes
and hashing run in a worker thread, one hop per `chunk_bytes`, so the event loop
only moves buffers. An exclusive `flock` keeps two attempts of one job (a
redelivery while the first worker still runs) from writing the same file.
"""

import asyncio
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from offload_contracts import FileRef
from offload_runtime.errors import TransientError
from offload_runtime.storage import FileStore, file_ref

READ_CHUNK = 1024 * 1024


class LocalPartialFile:
    """`PartialFile` on the local filesystem."""

    def __init__(self, files: FileStore, path: Path, handle: BinaryIO, chunk_bytes: int) -> None:
        self._files = files
        self.path = path
        self._handle = handle
        self._chunk_bytes = chunk_bytes
        self._hash = hashlib.sha256()
        self._written = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._closed = False

    @classmethod
    def open(cls, files: FileStore, path: Path, chunk_bytes: int) -> "LocalPartialFile":
        """Open (or create) and lock the file, and hash what it holds. Blocking: run in a thread."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TransientError("another attempt of this job is downloading it") from None
        partial = cls(files, path, os.fdopen(fd, "r+b"), chunk_bytes)
        # The earlier attempt's bytes count toward the checksum: re-hash them
        # (a hash state cannot be saved), reading at disk speed.
        while chunk := partial._handle.read(READ_CHUNK):
            partial._hash.update(chunk)
            partial._written += len(chunk)
        return partial

    @property
    def size(self) -> int:
        return self._written + self._buffered

    async def append(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self._chunk_bytes:
            await self._flush()

    async def digest(self) -> str:
        await self._flush()
        return self._hash.hexdigest()

    async def restart(self) -> None:
        self._buffer, self._buffered = [], 0
        await asyncio.to_thread(self._truncate)

    async def commit(self, tenant: str, content_type: str) -> FileRef:
        digest = await self.digest()
        await asyncio.to_thread(self._sync_and_close)
        stored = await self._files.adopt(tenant, self.path, content_type, sha256=digest)
        return file_ref(stored)

    async def close(self) -> None:
        """Keep what was received (the next attempt resumes from it) and release the lock."""
        if self._closed:
            return
        try:
            await self._flush()
        finally:
            await asyncio.to_thread(self._close)

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        self._handle.write(data)
        self._hash.update(data)
        self._written += len(data)

    def _truncate(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._hash = hashlib.sha256()
        self._written = 0

    def _sync_and_close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._handle.close()  # releases the flock


class FileVideoStorage:
    """`VideoStorage` on the runtime's `FileStore`."""

    def __init__(self, files: FileStore, *, chunk_bytes: int) -> None:
        self._files = files
        self._chunk_bytes = chunk_bytes

    @property
    def partial_dir(self) -> Path:
        return self._files.scratch_dir / "video"

    def partial_path(self, job_id: str) -> Path:
        return self.partial_dir / f"{job_id}.part"

    @asynccontextmanager
    async def open_partial(self, job_id: str) -> AsyncIterator[LocalPartialFile]:
        partial = await asyncio.to_thread(
            LocalPartialFile.open, self._files, self.partial_path(job_id), self._chunk_bytes
        )
        try:
            yield partial
        finally:
            await partial.close()

    async def discard_partial(self, job_id: str) -> None:
        await asyncio.to_thread(self.partial_path(job_id).unlink, True)

    async def find(self, tenant: str, file_id: str) -> FileRef | None:
        stored = await self._files.get(tenant, file_id)
        if stored is None or not await asyncio.to_thread(Path(stored.path).exists):
            return None
        return file_ref(stored)

    async def sweep(self, max_age_s: float) -> int:
        """Remove partial files untouched for `max_age_s` (jobs that will never resume)."""
        return await asyncio.to_thread(self._sweep, max_age_s)

    def _sweep(self, max_age_s: float) -> int:
        if not self.partial_dir.is_dir():
            return 0
        cutoff = time.time() - max_age_s
        removed = 0
        for path in self.partial_dir.glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
