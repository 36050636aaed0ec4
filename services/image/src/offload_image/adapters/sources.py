"""Where source images come from: the file store (by id, for the job's tenant) or an https URL.

A stored file is used in place: the pool process reads it from its path. A
URL is downloaded with httpx into the store's scratch directory, under a size
limit and timeouts, and removed after the job. Redirects are never followed
blindly: each hop's URL goes through the SSRF guard again.

Library errors become the runtime's taxonomy here: timeouts, connection
failures, 429 and 5xx are transient; other 4xx, refused addresses, oversize
files and missing files are permanent.
"""

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx

from offload_contracts.jobs import ImageSource
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.storage import FileStore
from offload_runtime.store import utcnow
from offload_runtime.url_guard import UnsafeURL, check_url

_WRITE_CHUNK = 1024 * 1024


class ImageSources:
    """Opens an `ImageSource` as a local file path for the duration of a job."""

    def __init__(
        self,
        files: FileStore,
        http: httpx.AsyncClient,
        *,
        max_bytes: int,
        allow_private: bool,
        max_redirects: int = 3,
        total_timeout_s: float = 30,
    ) -> None:
        self._files = files
        self._http = http
        self._max_bytes = max_bytes
        self._allow_private = allow_private
        self._max_redirects = max_redirects
        self._total_timeout_s = total_timeout_s

    @contextlib.asynccontextmanager
    async def open(self, source: ImageSource, tenant: str) -> AsyncIterator[Path]:
        """Yield a path to the source's bytes; a downloaded copy is removed afterwards."""
        if source.file_id is not None:
            yield await self._stored(source.file_id, tenant)
            return
        assert source.url is not None  # the contract requires exactly one
        path = await self._download(source.url)
        try:
            yield path
        finally:
            await asyncio.to_thread(path.unlink, True)

    async def _stored(self, file_id: str, tenant: str) -> Path:
        stored = await self._files.get(tenant, file_id)
        if stored is None:
            raise PermanentError(f"source file {file_id} not found")
        if stored.bytes > self._max_bytes:
            raise PermanentError(
                f"source file is {stored.bytes:,} bytes, over the limit of {self._max_bytes:,}"
            )
        return Path(stored.path)

    # ------------------------------------------------------------------ URLs

    async def _download(self, url: str) -> Path:
        try:
            async with asyncio.timeout(self._total_timeout_s):
                return await self._follow(url)
        except TimeoutError as exc:
            raise TransientError(
                f"downloading the source URL took longer than {self._total_timeout_s:g}s"
            ) from exc

    async def _follow(self, url: str) -> Path:
        for _hop in range(self._max_redirects + 1):
            try:
                await check_url(url, allow_private=self._allow_private, schemes=("https",))
            except UnsafeURL as exc:
                raise PermanentError(f"source URL refused: {exc}") from exc
            try:
                async with self._http.stream("GET", url, follow_redirects=False) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise PermanentError(
                                f"source URL answered {response.status_code} without a Location"
                            )
                        url = urljoin(url, location)
                        continue
                    _raise_for_status(response)
                    return await self._save(response)
            except UnsafeURL as exc:  # the address connected to, checked again (DNS may change)
                raise PermanentError(f"source URL refused: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise TransientError(f"source URL timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise TransientError(f"source URL could not be fetched: {exc!r}") from exc
        raise PermanentError(f"source URL redirected more than {self._max_redirects} times")

    async def _save(self, response: httpx.Response) -> Path:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise PermanentError(
                f"source URL serves {int(declared):,} bytes, over the limit of {self._max_bytes:,}"
            )
        directory = self._files.scratch_dir / "image-sources"
        fd, name = await asyncio.to_thread(_temp_file, directory)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as sink:
                size = 0
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise PermanentError(
                            f"source URL sent more than the limit of {self._max_bytes:,} bytes"
                        )
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_CHUNK:  # one thread hop per MiB
                        await asyncio.to_thread(sink.write, b"".join(pending))
                        pending, pending_size = [], 0
                if pending:
                    await asyncio.to_thread(sink.write, b"".join(pending))
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        return path


def _temp_file(directory: Path) -> tuple[int, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=directory, prefix="source-")


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise TransientError(
            f"source URL answered {status}", retry_after=_retry_after(response.headers)
        )
    raise PermanentError(f"source URL answered {status}")


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None
