"""`video.generate`: have the provider render a video, then bring the file home.

The job, as one attempt sees it:

1. A file stored by an earlier attempt (checkpoint `file`) is the answer.
2. The render: the provider's id from an earlier attempt (checkpoint `render`), or a
   new submit (with the job id as idempotency key) whose id is saved at once. So a
   retry never orders a second render of the same job.
3. Poll its status with a growing interval, reporting the provider's progress.
4. Download into the job's partial file, resuming with `Range` from the bytes an
   earlier attempt stored, hashing as the bytes arrive; then check the size and the
   SHA-256 against what the provider announced, and move the file into storage.

Errors: the ports raise `TransientError` (timeouts, dropped connections, 429, 5xx)
or `PermanentError` (4xx). A render the provider reports `failed` is permanent, with
the provider's reason: a new render would be a new order (and a new cost), which is
the user's call; the `render` checkpoint is cleared so a replay submits afresh.

A user's cancel stops the provider's render and removes the partial file; a timeout
or a shutdown keeps both, since the next attempt resumes from them. A job cancelled
between attempts is cleaned up the same way when its next delivery comes due
(`cancelled`, called by the runner).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from offload_contracts import FileRef, JobRequestBase, VideoGenerateInput, VideoGenerateResult
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.logging import get_logger
from offload_runtime.ports import JobContext

VideoRequest = JobRequestBase[VideoGenerateInput]
"""A `video.generate` job's request."""

log = get_logger("offload.video")

CHECKPOINT_RENDER = "render"
CHECKPOINT_FILE = "file"

RENDER_SHARE = 80.0
"""Job progress 0–80 % follows the render, 80–100 % the download."""

RenderStatus = Literal["queued", "processing", "succeeded", "failed", "cancelled"]


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class RenderSpec:
    """What is asked of the provider."""

    prompt: str
    duration_s: int
    resolution: str
    model: str


@dataclass(frozen=True)
class RenderState:
    """A render as the provider reports it."""

    status: RenderStatus
    progress: float = 0.0
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None


class RenderNotFound(TransientError):
    """The provider no longer knows the render (expired, or the provider lost it)."""


class RangeNotSatisfiable(TransientError):
    """The provider refused the resume offset: the partial file cannot be a prefix."""


class Download(Protocol):
    """An open response for a render's content."""

    @property
    def offset(self) -> int:
        """Where the body starts in the file (0 when the provider sent it whole)."""
        ...

    @property
    def total(self) -> int:
        """The whole file's size."""
        ...

    @property
    def sha256(self) -> str | None:
        """The whole file's SHA-256, when the provider says it."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, as it arrives."""
        ...


class VideoProvider(Protocol):
    """The external video API."""

    async def submit(self, spec: RenderSpec, *, idempotency_key: str) -> str:
        """Order a render; returns the provider's id for it."""
        ...

    async def status(self, render_id: str) -> RenderState:
        """The render's state; raises `RenderNotFound` when the provider forgot it."""
        ...

    def download(
        self, render_id: str, *, offset: int, if_sha256: str | None
    ) -> AbstractAsyncContextManager[Download]:
        """The content from `offset` on, if the file still has checksum `if_sha256`
        (otherwise, the whole file)."""
        ...

    async def cancel(self, render_id: str) -> None:
        """Stop the render (or delete the finished one)."""
        ...


class PartialFile(Protocol):
    """A job's download in progress: the bytes stored so far, and their running hash."""

    @property
    def size(self) -> int:
        """Bytes held so far (the resume offset)."""
        ...

    async def append(self, chunk: bytes) -> None:
        """Add bytes at the end (buffered; written and hashed off the event loop)."""
        ...

    async def digest(self) -> str:
        """Hex SHA-256 of every byte held so far."""
        ...

    async def restart(self) -> None:
        """Drop every byte held: the download starts again from 0."""
        ...

    async def commit(self, tenant: str, content_type: str) -> FileRef:
        """Move the finished file into storage; the partial file is gone afterwards."""
        ...


class VideoStorage(Protocol):
    """Where downloads go."""

    def open_partial(self, job_id: str) -> AbstractAsyncContextManager[PartialFile]:
        """The job's partial file, created empty or reopened with what an earlier
        attempt stored. Only one attempt holds it at a time."""
        ...

    async def discard_partial(self, job_id: str) -> None:
        """Remove the job's partial file, if any."""
        ...

    async def find(self, tenant: str, file_id: str) -> FileRef | None:
        """A stored file, if it still exists."""
        ...


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class VideoConfig:
    """How the job polls and what it stores."""

    default_model: str = "sandbox"
    poll_initial_s: float = 2.0
    poll_max_s: float = 15.0
    poll_factor: float = 1.5
    max_bytes: int = 8 * 1024**3
    content_type: str = "video/mp4"


# --------------------------------------------------------------------------- the job


class VideoGenerator:
    """Runs `video.generate` jobs against a provider and a storage."""

    def __init__(
        self,
        provider: VideoProvider,
        storage: VideoStorage,
        config: VideoConfig,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.storage = storage
        self.config = config
        self._sleep = sleep

    async def run(self, request: VideoRequest, ctx: JobContext) -> VideoGenerateResult:
        """One attempt of the job (see the module docstring)."""
        stored = await self._already_stored(request, ctx)
        if stored is not None:
            return VideoGenerateResult(file=stored)
        render_id: str | None = await ctx.load_checkpoint(CHECKPOINT_RENDER) or None
        try:
            if render_id is None:
                render_id = await self._submit(request, ctx)
            state = await self._wait_for_render(render_id, ctx)
            file = await self._download(request, render_id, state, ctx)
        except asyncio.CancelledError:
            if ctx.cancel_requested:
                await self._abandon(request.id, render_id)
            raise
        except RenderNotFound:
            # A new render is the only way on; the next attempt orders it.
            await ctx.save_checkpoint(CHECKPOINT_RENDER, "")
            await self.storage.discard_partial(request.id)
            raise
        except PermanentError:
            await self.storage.discard_partial(request.id)
            raise
        except Exception:
            if request.attempt >= request.max_attempts:  # nobody will resume it
                await self._abandon(request.id, render_id)
            raise
        await ctx.save_checkpoint(CHECKPOINT_FILE, file.model_dump_json())
        return VideoGenerateResult(file=file)

    async def cancelled(self, request: VideoRequest, ctx: JobContext) -> None:
        """The job was cancelled between attempts: stop its render, drop its partial file."""
        render_id: str | None = await ctx.load_checkpoint(CHECKPOINT_RENDER) or None
        await self._abandon(request.id, render_id)

    async def _already_stored(self, request: VideoRequest, ctx: JobContext) -> FileRef | None:
        saved = await ctx.load_checkpoint(CHECKPOINT_FILE)
        if not saved:
            return None
        ref = FileRef.model_validate_json(saved)
        return await self.storage.find(request.tenant, ref.id)

    async def _submit(self, request: VideoRequest, ctx: JobContext) -> str:
        spec = RenderSpec(
            prompt=request.input.prompt,
            duration_s=request.input.duration_s,
            resolution=request.input.resolution,
            model=request.input.model or self.config.default_model,
        )
        render_id = await self.provider.submit(spec, idempotency_key=request.id)
        await ctx.save_checkpoint(CHECKPOINT_RENDER, render_id)
        log.info("render submitted", render_id=render_id, model=spec.model)
        return render_id

    async def _wait_for_render(self, render_id: str, ctx: JobContext) -> RenderState:
        delay = self.config.poll_initial_s
        while True:
            state = await self.provider.status(render_id)
            if state.status == "succeeded":
                return state
            if state.status in ("failed", "cancelled"):
                await ctx.save_checkpoint(CHECKPOINT_RENDER, "")
                reason = state.error or "no reason given"
                raise PermanentError(f"the provider's render {render_id} {state.status}: {reason}")
            percent = max(0.0, min(100.0, state.progress))
            await ctx.progress(percent * RENDER_SHARE / 100, f"rendering: {percent:.0f}%")
            await self._sleep(delay)
            delay = min(delay * self.config.poll_factor, self.config.poll_max_s)

    async def _download(
        self, request: VideoRequest, render_id: str, state: RenderState, ctx: JobContext
    ) -> FileRef:
        async with self.storage.open_partial(request.id) as partial:
            total, expected = state.bytes, state.sha256
            if total is not None and partial.size > total:
                await partial.restart()  # not a prefix of this file: start over
            if total is None or partial.size < total:
                total, announced = await self._fetch(render_id, state, partial, ctx)
                expected = expected or announced
            if partial.size != total:
                raise TransientError(
                    f"download of {render_id} ended at {partial.size} of {total} bytes"
                )
            digest = await partial.digest()
            if expected is not None and digest != expected:
                await partial.restart()
                raise TransientError(
                    f"checksum mismatch for {render_id}: got {digest}, the provider says "
                    f"{expected}; the download starts over"
                )
            file = await partial.commit(request.tenant, self.config.content_type)
        log.info("video stored", render_id=render_id, file_id=file.id, bytes=file.bytes)
        return file

    async def _fetch(
        self, render_id: str, state: RenderState, partial: PartialFile, ctx: JobContext
    ) -> tuple[int, str | None]:
        """Append the rest of the file to `partial`; returns the announced size and checksum."""
        try:
            download_cm = self.provider.download(
                render_id, offset=partial.size, if_sha256=state.sha256
            )
            async with download_cm as download:
                if download.offset != partial.size:
                    if download.offset != 0:
                        raise TransientError(
                            f"asked {render_id} from byte {partial.size}, "
                            f"got byte {download.offset}"
                        )
                    await partial.restart()  # the provider sent the whole file
                elif download.offset:
                    log.info("download resumed", render_id=render_id, offset=download.offset)
                total = download.total
                self._check_announced(render_id, state, download)
                async for chunk in download.chunks():
                    if partial.size + len(chunk) > total:
                        raise TransientError(f"{render_id} sent more than its {total} bytes")
                    await partial.append(chunk)
                    await ctx.progress(
                        RENDER_SHARE + (100 - RENDER_SHARE) * partial.size / total,
                        f"downloading: {partial.size / 1e6:.1f} of {total / 1e6:.1f} MB",
                    )
                return total, download.sha256
        except RangeNotSatisfiable:
            await partial.restart()
            raise

    def _check_announced(self, render_id: str, state: RenderState, download: Download) -> None:
        if download.total > self.config.max_bytes:
            raise PermanentError(
                f"{render_id} is {download.total} bytes, over the limit of {self.config.max_bytes}"
            )
        if state.bytes is not None and download.total != state.bytes:
            raise TransientError(
                f"{render_id}: status says {state.bytes} bytes, the download {download.total}"
            )
        if state.sha256 and download.sha256 and state.sha256 != download.sha256:
            raise TransientError(f"{render_id}: status and download disagree on the checksum")

    async def _abandon(self, job_id: str, render_id: str | None) -> None:
        """Best effort: stop the provider's render and remove the partial file."""
        await self.storage.discard_partial(job_id)
        if render_id is None:
            return
        try:
            await self.provider.cancel(render_id)
            log.info("render cancelled at the provider", render_id=render_id)
        except Exception:
            log.warning("could not cancel the render", render_id=render_id, exc_info=True)
