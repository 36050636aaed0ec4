"""`video.generate`'s domain with fake ports: submit once, poll, resume, verify, clean up."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from offload_contracts import FileRef, VideoGenerateInput, VideoGenerateRequest
from offload_runtime.errors import PermanentError, TransientError
from offload_video.generation import (
    CHECKPOINT_FILE,
    CHECKPOINT_RENDER,
    RangeNotSatisfiable,
    RenderNotFound,
    RenderSpec,
    RenderState,
    VideoConfig,
    VideoGenerator,
)

CONTENT = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(CONTENT).hexdigest()
DONE = RenderState("succeeded", 100, bytes=len(CONTENT), sha256=SHA)


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeContext:
    job_id: str = "job-1"
    tenant: str = "acme"
    attempt: int = 1
    cancel_requested: bool = False
    checkpoints: dict[str, str] = field(default_factory=dict)
    progress_seen: list[tuple[float, str]] = field(default_factory=list)

    async def progress(self, percent: float, message: str = "") -> None:
        self.progress_seen.append((percent, message))

    async def load_checkpoint(self, step: str) -> str | None:
        return self.checkpoints.get(step)

    async def save_checkpoint(self, step: str, value: str) -> None:
        self.checkpoints[step] = value


@dataclass
class FakeDownload:
    offset: int
    total: int
    sha256: str | None
    body: bytes
    break_after: int | None = None
    piece: int = 10_000

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        for start in range(0, len(self.body), self.piece):
            piece = self.body[start : start + self.piece]
            if self.break_after is not None and sent + len(piece) > self.break_after:
                yield piece[: self.break_after - sent]
                raise TransientError("connection dropped")
            sent += len(piece)
            yield piece


@dataclass
class FakeProvider:
    content: bytes = CONTENT
    states: list[RenderState] = field(default_factory=lambda: [DONE])
    break_first_download_at: int | None = None
    ignore_range: bool = False
    announced_sha: str | None = SHA
    status_errors: list[Exception] = field(default_factory=list)
    block_download: asyncio.Event | None = None
    submitted: list[tuple[RenderSpec, str]] = field(default_factory=list)
    polls: int = 0
    downloads: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    cancelled: list[str] = field(default_factory=list)

    async def submit(self, spec: RenderSpec, *, idempotency_key: str) -> str:
        self.submitted.append((spec, idempotency_key))
        return f"render-{len(self.submitted)}"

    async def status(self, render_id: str) -> RenderState:
        self.polls += 1
        if self.status_errors:
            raise self.status_errors.pop(0)
        return self.states[min(self.polls - 1, len(self.states) - 1)]

    @asynccontextmanager
    async def download(
        self, render_id: str, *, offset: int, if_sha256: str | None
    ) -> AsyncIterator[FakeDownload]:
        self.downloads.append(offset)
        if self.block_download is not None:
            await self.block_download.wait()
        if offset >= len(self.content) and not self.ignore_range:
            raise RangeNotSatisfiable("416")
        start = 0 if self.ignore_range else offset
        body = self.content[start:]
        first = len(self.downloads) == 1
        cut = self.break_first_download_at if first else None
        self.bytes_sent += len(body) if cut is None else cut - start
        yield FakeDownload(
            start, len(self.content), self.announced_sha, body, None if cut is None else cut - start
        )

    async def cancel(self, render_id: str) -> None:
        self.cancelled.append(render_id)


class FakePartial:
    def __init__(self, storage: "FakeStorage", job_id: str) -> None:
        self._storage = storage
        self._job_id = job_id

    @property
    def data(self) -> bytearray:
        return self._storage.partials[self._job_id]

    @property
    def size(self) -> int:
        return len(self.data)

    async def append(self, chunk: bytes) -> None:
        self.data.extend(chunk)

    async def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    async def restart(self) -> None:
        self.data.clear()

    async def commit(self, tenant: str, content_type: str) -> FileRef:
        data = bytes(self._storage.partials.pop(self._job_id))
        file_id = f"file-{len(self._storage.files) + 1}"
        ref = FileRef(
            id=file_id,
            url=f"/v1/files/{file_id}",
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=content_type,
        )
        self._storage.files[file_id] = (tenant, data, ref)
        return ref


@dataclass
class FakeStorage:
    partials: dict[str, bytearray] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, FileRef]] = field(default_factory=dict)

    @asynccontextmanager
    async def open_partial(self, job_id: str) -> AsyncIterator[FakePartial]:
        self.partials.setdefault(job_id, bytearray())
        yield FakePartial(self, job_id)

    async def discard_partial(self, job_id: str) -> None:
        self.partials.pop(job_id, None)

    async def find(self, tenant: str, file_id: str) -> FileRef | None:
        found = self.files.get(file_id)
        return found[2] if found and found[0] == tenant else None


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_request(**overrides: Any) -> VideoGenerateRequest:
    values: dict[str, Any] = {
        "id": "job-1",
        "tenant": "acme",
        "attempt": 1,
        "max_attempts": 5,
        "created_at": datetime.now(UTC),
        "input": VideoGenerateInput(prompt="a cat surfing", duration_s=4, resolution="720p"),
    }
    values.update(overrides)
    return VideoGenerateRequest(**values)


def make_generator(
    provider: FakeProvider, storage: FakeStorage, sleeps: Sleeps | None = None, **config: Any
) -> VideoGenerator:
    values: dict[str, Any] = {"poll_initial_s": 1.0, "poll_max_s": 4.0, "poll_factor": 2.0}
    values.update(config)
    return VideoGenerator(provider, storage, VideoConfig(**values), sleep=sleeps or Sleeps())


# --------------------------------------------------------------------------- tests


async def test_a_render_is_submitted_once_polled_and_stored_with_its_checksum() -> None:
    provider, storage, ctx = FakeProvider(), FakeStorage(), FakeContext()

    result = await make_generator(provider, storage).run(make_request(), ctx)

    assert result.file.bytes == len(CONTENT) and result.file.sha256 == SHA
    assert storage.files[result.file.id][1] == CONTENT
    assert storage.partials == {}
    [(spec, key)] = provider.submitted
    assert key == "job-1"  # the provider dedupes a re-sent submit by the job id
    assert spec == RenderSpec("a cat surfing", 4, "720p", "sandbox")
    assert ctx.checkpoints[CHECKPOINT_RENDER] == "render-1"
    assert FileRef.model_validate_json(ctx.checkpoints[CHECKPOINT_FILE]) == result.file


async def test_the_job_model_overrides_the_default() -> None:
    provider = FakeProvider()
    request = make_request(
        input=VideoGenerateInput(prompt="x", duration_s=1, resolution="4k", model="sandbox-fail-1")
    )
    await make_generator(provider, FakeStorage()).run(request, FakeContext())
    assert provider.submitted[0][0].model == "sandbox-fail-1"


async def test_polling_backs_off_to_the_cap_and_reports_the_providers_progress() -> None:
    rendering = [RenderState("queued", 0)] + [
        RenderState("processing", p) for p in (10, 30, 50, 70, 90)
    ]
    provider = FakeProvider(states=[*rendering, DONE])
    sleeps, ctx = Sleeps(), FakeContext()

    await make_generator(provider, FakeStorage(), sleeps).run(make_request(), ctx)

    assert sleeps.delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    render_progress = [p for p, message in ctx.progress_seen if message.startswith("rendering")]
    assert render_progress == [0.0, 8.0, 24.0, 40.0, 56.0, 72.0]  # 80 % of the job is the render
    download = [p for p, message in ctx.progress_seen if message.startswith("downloading")]
    assert download and download[-1] == 100.0 and all(80 < p <= 100 for p in download)


async def test_a_retry_uses_the_recorded_render_and_never_submits_again() -> None:
    provider, ctx = FakeProvider(), FakeContext(attempt=2)
    ctx.checkpoints[CHECKPOINT_RENDER] = "render-from-attempt-1"

    result = await make_generator(provider, FakeStorage()).run(make_request(attempt=2), ctx)

    assert provider.submitted == []
    assert result.file.sha256 == SHA


async def test_a_transient_poll_error_keeps_the_render_for_the_next_attempt() -> None:
    provider = FakeProvider(status_errors=[TransientError("503", retry_after=1)])
    storage, ctx = FakeStorage(), FakeContext()
    generator = make_generator(provider, storage)

    with pytest.raises(TransientError):
        await generator.run(make_request(), ctx)
    await generator.run(make_request(attempt=2), ctx)

    assert len(provider.submitted) == 1


async def test_a_broken_download_resumes_from_the_stored_bytes() -> None:
    half = len(CONTENT) // 2
    provider = FakeProvider(break_first_download_at=half)
    storage, ctx = FakeStorage(), FakeContext()
    generator = make_generator(provider, storage)

    with pytest.raises(TransientError, match="connection dropped"):
        await generator.run(make_request(), ctx)
    assert len(storage.partials["job-1"]) == half  # what arrived is kept

    result = await generator.run(make_request(attempt=2), ctx)

    assert provider.downloads == [0, half]
    assert provider.bytes_sent == len(CONTENT)  # nothing fetched twice
    assert storage.files[result.file.id][1] == CONTENT
    assert result.file.sha256 == SHA


async def test_a_provider_that_ignores_the_range_restarts_the_file_cleanly() -> None:
    provider = FakeProvider(ignore_range=True)
    storage, ctx = FakeStorage(), FakeContext()
    storage.partials["job-1"] = bytearray(CONTENT[:1000])

    result = await make_generator(provider, storage).run(make_request(), ctx)

    assert storage.files[result.file.id][1] == CONTENT


async def test_a_partial_longer_than_the_file_starts_over() -> None:
    provider, storage = FakeProvider(), FakeStorage()
    storage.partials["job-1"] = bytearray(CONTENT + b"extra")

    result = await make_generator(provider, storage).run(make_request(), FakeContext())

    assert provider.downloads == [0]
    assert storage.files[result.file.id][1] == CONTENT


async def test_a_complete_partial_is_verified_without_downloading_again() -> None:
    provider, storage = FakeProvider(), FakeStorage()
    storage.partials["job-1"] = bytearray(CONTENT)

    result = await make_generator(provider, storage).run(make_request(), FakeContext())

    assert provider.downloads == []
    assert result.file.sha256 == SHA


async def test_a_checksum_mismatch_is_transient_and_the_next_attempt_starts_from_zero() -> None:
    corrupted = CONTENT[:5000] + b"\x00" + CONTENT[5001:]  # a byte damaged on the way
    provider, storage = FakeProvider(content=corrupted), FakeStorage()

    with pytest.raises(TransientError, match="checksum mismatch"):
        await make_generator(provider, storage).run(make_request(), FakeContext())

    assert storage.partials["job-1"] == bytearray()
    assert storage.files == {}


async def test_a_short_body_is_transient() -> None:
    provider = FakeProvider(content=CONTENT)
    provider.states = [RenderState("succeeded", 100, len(CONTENT) + 10, None)]
    storage = FakeStorage()

    with pytest.raises(TransientError):
        await make_generator(provider, storage).run(make_request(), FakeContext())
    assert storage.files == {}


async def test_a_file_over_the_limit_is_permanent_and_leaves_nothing() -> None:
    provider, storage = FakeProvider(), FakeStorage()

    with pytest.raises(PermanentError, match="over the limit"):
        await make_generator(provider, storage, max_bytes=1000).run(make_request(), FakeContext())
    assert storage.partials == {} and storage.files == {}


async def test_a_failed_render_is_permanent_with_the_providers_reason() -> None:
    provider = FakeProvider(
        states=[RenderState("processing", 40), RenderState("failed", 40, error="GPU on fire")]
    )
    storage, ctx = FakeStorage(), FakeContext()

    with pytest.raises(PermanentError, match="GPU on fire"):
        await make_generator(provider, storage).run(make_request(), ctx)

    assert ctx.checkpoints[CHECKPOINT_RENDER] == ""  # a replay orders a new render
    assert storage.partials == {}


async def test_a_render_the_provider_forgot_is_ordered_again_on_the_next_attempt() -> None:
    provider = FakeProvider(status_errors=[RenderNotFound("404")])
    ctx = FakeContext()
    ctx.checkpoints[CHECKPOINT_RENDER] = "render-lost"
    generator = make_generator(provider, FakeStorage())

    with pytest.raises(RenderNotFound):
        await generator.run(make_request(), ctx)
    await generator.run(make_request(attempt=2), ctx)

    assert len(provider.submitted) == 1
    assert ctx.checkpoints[CHECKPOINT_RENDER] == "render-1"


async def test_a_stored_file_from_an_earlier_attempt_is_the_answer() -> None:
    provider, storage, ctx = FakeProvider(), FakeStorage(), FakeContext()
    first = await make_generator(provider, storage).run(make_request(), ctx)

    again = await make_generator(provider, storage).run(make_request(attempt=2), ctx)

    assert again.file == first.file
    assert len(provider.submitted) == 1 and provider.downloads == [0]


async def test_a_users_cancel_stops_the_render_and_removes_the_partial_file() -> None:
    provider = FakeProvider(block_download=asyncio.Event())
    storage, ctx = FakeStorage(), FakeContext()
    task = asyncio.create_task(make_generator(provider, storage).run(make_request(), ctx))
    while not provider.downloads:
        await asyncio.sleep(0)

    ctx.cancel_requested = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert provider.cancelled == ["render-1"]
    assert "job-1" not in storage.partials


async def test_a_shutdown_or_timeout_keeps_the_render_and_the_partial_file() -> None:
    provider = FakeProvider(block_download=asyncio.Event())
    storage, ctx = FakeStorage(), FakeContext()
    storage.partials["job-1"] = bytearray(CONTENT[:500])
    task = asyncio.create_task(make_generator(provider, storage).run(make_request(), ctx))
    while not provider.downloads:
        await asyncio.sleep(0)

    task.cancel()  # not a user's cancel: cancel_requested stays False
    with pytest.raises(asyncio.CancelledError):
        await task

    assert provider.cancelled == []
    assert storage.partials["job-1"] == bytearray(CONTENT[:500])


async def test_the_last_attempt_failing_cleans_up_since_nobody_will_resume() -> None:
    provider = FakeProvider(break_first_download_at=1000)
    storage = FakeStorage()

    with pytest.raises(TransientError):
        await make_generator(provider, storage).run(
            make_request(attempt=5, max_attempts=5), FakeContext(attempt=5)
        )

    assert provider.cancelled == ["render-1"]
    assert storage.partials == {}
