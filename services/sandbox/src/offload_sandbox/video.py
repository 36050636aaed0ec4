"""Sandbox video provider: submit, poll, download, cancel (shaped like OpenAI's `/v1/videos`).

- `POST /v1/videos` `{prompt, duration_s, resolution, model?, size_bytes?}` → 201 with the
  render (`id`, `status`, `progress`, ...). An `Idempotency-Key` header names the caller's
  job: a second submit with the same key returns the same render (200) and creates nothing.
- `GET /v1/videos/{id}` → `status` (`queued`, `processing`, `succeeded`, `failed`,
  `cancelled`), `progress` 0–100, and, once succeeded, `bytes` and `sha256`.
- `GET /v1/videos/{id}/content` → the file, `video/mp4`. The bytes are a deterministic
  pattern generated from the render id while they are sent (never held whole in memory).
  Single `Range` requests answer 206; `If-Range` with the `ETag` guards a resume.
  `X-Content-SHA256` (and the `ETag`) carry the whole file's SHA-256.
- `DELETE /v1/videos/{id}` cancels a render still queued or processing; a finished one is
  deleted.
- `GET /v1/sandbox/video/renders?job=` → counters per render for tests and demos (`job` is
  the idempotency key, Offload's job id): submissions for its key, status and content
  calls, bytes served, the `Range` headers seen, injected failures, whether it was
  cancelled or deleted.

Size: `size_bytes` when given, else `duration_s` × the resolution's byte rate
(`OFFLOAD_SANDBOX_VIDEO_BYTES_PER_SECOND` is the 1080p rate; 480p is ¼ of it, 720p ½,
4k 4×). Render time: `OFFLOAD_SANDBOX_VIDEO_RENDER_S`, plus
`OFFLOAD_SANDBOX_VIDEO_RENDER_S_PER_VIDEO_S` per second of video (queued for its first tenth).

Failure injection by model name (DESIGN §8, plus two video-only ones):
`sandbox` works; `sandbox-reject` → the submit answers 400; `sandbox-fail-N` → the render is
accepted, then its first N status or content calls answer 503 with `Retry-After`;
`sandbox-drop-P` → the first download of the render breaks (connection dropped) after P % of
the file; `sandbox-render-fail` → the render ends `failed` with a reason.
`OFFLOAD_SANDBOX_VIDEO_DROP_FIRST_DOWNLOAD_AT` (a fraction) breaks every render's first download;
`OFFLOAD_SANDBOX_VIDEO_DOWNLOAD_BYTES_PER_SECOND` caps each download's rate.
"""

import asyncio
import hashlib
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from offload_sandbox.settings import SandboxSettings

BLOCK = 1024 * 1024
"""The pattern's period: every MiB of a file is the render's pattern, rotated."""

RESOLUTION_FACTOR = {"480p": 0.25, "720p": 0.5, "1080p": 1.0, "4k": 4.0}

_FAIL = re.compile(r"^sandbox-fail-(\d{1,3})$")
_DROP = re.compile(r"^sandbox-drop-(\d{1,2})$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

RenderStatus = Literal["queued", "processing", "succeeded", "failed", "cancelled"]


class InjectedDrop(Exception):
    """Raised mid-body to drop a download's connection on purpose (failure injection)."""


class _QuietInjectedDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for every drop the sandbox injects."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, InjectedDrop):
                return False
            if isinstance(exc, BaseExceptionGroup) and any(
                isinstance(inner, InjectedDrop) for inner in exc.exceptions
            ):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


class VideoSpec(BaseModel):
    """A submit's body."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000)
    duration_s: int = Field(ge=1, le=600)
    resolution: Literal["480p", "720p", "1080p", "4k"]
    model: str = Field(default="sandbox", max_length=200)
    size_bytes: int | None = Field(
        default=None, ge=1, description="Sandbox only: the file's exact size, overriding the rate."
    )


@dataclass
class Render:
    """One render and its counters."""

    id: str
    key: str | None
    model: str
    size: int
    created: float
    render_s: float
    fail_calls: int = 0
    drop_at: int | None = None
    render_fails: bool = False
    sha256: str | None = None
    cancelled_at: float | None = None
    deleted: bool = False
    submissions: int = 1
    status_calls: int = 0
    content_calls: int = 0
    bytes_served: int = 0
    injected_failures: int = 0
    ranges: list[str | None] = field(default_factory=list)
    hashing: "asyncio.Task[None] | None" = None

    def status(self, now: float) -> tuple[RenderStatus, int]:
        if self.cancelled_at is not None:
            return "cancelled", self._progress(self.cancelled_at)
        elapsed = now - self.created
        if elapsed < self.render_s * 0.1:
            return "queued", 0
        if elapsed < self.render_s or (self.sha256 is None and not self.render_fails):
            return "processing", min(99, self._progress(now))
        return ("failed" if self.render_fails else "succeeded"), 100

    def _progress(self, now: float) -> int:
        if self.render_s <= 0:
            return 100
        return max(0, min(100, int(100 * (now - self.created) / self.render_s)))

    def public(self, now: float) -> dict[str, Any]:
        status, progress = self.status(now)
        body: dict[str, Any] = {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
        }
        if status == "succeeded":
            body.update(bytes=self.size, sha256=self.sha256, content_type="video/mp4")
        if status == "failed":
            body["error"] = {"code": "render_failed", "message": "the renderer crashed (injected)"}
        return body

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "model": self.model,
            "status": self.status(now)[0],
            "bytes": self.size,
            "submissions": self.submissions,
            "status_calls": self.status_calls,
            "content_calls": self.content_calls,
            "bytes_served": self.bytes_served,
            "ranges": self.ranges,
            "injected_failures": self.injected_failures,
            "cancelled": self.cancelled_at is not None,
            "deleted": self.deleted,
        }


class _Patterns:
    """A few renders' 1 MiB patterns, generated from their ids on demand."""

    def __init__(self, size: int = 16) -> None:
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._size = size

    def of(self, render_id: str) -> bytes:
        pattern = self._cache.get(render_id)
        if pattern is None:
            seed = int.from_bytes(hashlib.sha256(render_id.encode()).digest()[:8], "big")
            pattern = random.Random(seed).randbytes(BLOCK)
            self._cache[render_id] = pattern
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(render_id)
        return pattern


def content_pieces(
    pattern: bytes, start: int, end: int, piece_size: int = BLOCK
) -> Iterator[bytes]:
    """Bytes `start..end` (exclusive) of the file, at most `piece_size` (≤ one block) each.

    Block k is the pattern rotated by a k-dependent offset, so no two MiB of a
    file are alike and a misplaced resume shows up in the checksum.
    """
    offset = start
    while offset < end:
        block, inside = divmod(offset, BLOCK)
        rotation = (block * 7919 * 131) % BLOCK
        rotated = pattern[rotation:] + pattern[:rotation]
        stop = min(BLOCK, inside + (end - offset))
        for at in range(inside, stop, piece_size):
            yield rotated[at : min(stop, at + piece_size)]
        offset += stop - inside


def _sha256_of_content(pattern: bytes, size: int) -> str:
    digest = hashlib.sha256()
    for piece in content_pieces(pattern, 0, size):
        digest.update(piece)
    return digest.hexdigest()


def _problem(status: int, title: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers or None,
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["invalid"] | None:
    """A single `bytes=` range as (start, end exclusive); None = the whole file.

    Several ranges or a malformed header are ignored (the whole file), as RFC
    9110 allows; a start past the end is unsatisfiable ("invalid").
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            return "invalid"
        return max(0, size - length), size
    start = int(first)
    if start >= size:
        return "invalid"
    end = size if last == "" else min(size, int(last) + 1)
    if end <= start:
        return "invalid"
    return start, end


class VideoSandbox:
    """The renders, their counters, and the rules of the failure injection."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.renders: dict[str, Render] = {}
        self.by_key: dict[str, str] = {}
        self.patterns = _Patterns()

    def size_of(self, spec: VideoSpec) -> int:
        if spec.size_bytes is not None:
            return spec.size_bytes
        rate = self.settings.sandbox_video_bytes_per_second * RESOLUTION_FACTOR[spec.resolution]
        return max(1, int(spec.duration_s * rate))

    def create(self, spec: VideoSpec, key: str | None) -> Render:
        fail = _FAIL.match(spec.model)
        drop = _DROP.match(spec.model)
        drop_at = None
        if drop:
            drop_at = int(drop.group(1))
        elif self.settings.sandbox_video_drop_first_download_at is not None:
            drop_at = round(self.settings.sandbox_video_drop_first_download_at * 100)
        size = self.size_of(spec)
        render = Render(
            id=f"video_{uuid.uuid4().hex}",
            key=key,
            model=spec.model,
            size=size,
            created=time.monotonic(),
            render_s=self.settings.sandbox_video_render_s
            + spec.duration_s * self.settings.sandbox_video_render_s_per_video_s,
            fail_calls=int(fail.group(1)) if fail else 0,
            drop_at=drop_at,
            render_fails=spec.model == "sandbox-render-fail",
        )
        self.renders[render.id] = render
        if key is not None:
            self.by_key[key] = render.id
        if not render.render_fails:
            render.hashing = asyncio.create_task(self._hash(render))
        return render

    async def _hash(self, render: Render) -> None:
        # The checksum needs every byte once; a thread keeps the loop serving meanwhile.
        pattern = self.patterns.of(render.id)
        render.sha256 = await asyncio.to_thread(_sha256_of_content, pattern, render.size)

    def injected_failure(self, render: Render) -> JSONResponse | None:
        """The 503 a `sandbox-fail-N` render answers to its first N follow-up calls."""
        if render.injected_failures >= render.fail_calls:
            return None
        render.injected_failures += 1
        retry_after = self.settings.sandbox_video_retry_after_s
        return _problem(
            503,
            "Service Unavailable",
            f"injected failure {render.injected_failures} of {render.fail_calls}",
            **{"Retry-After": f"{retry_after:g}"},
        )


def _known_model(model: str) -> bool:
    return (
        model in ("sandbox", "sandbox-reject", "sandbox-render-fail")
        or bool(_FAIL.match(model))
        or bool(_DROP.match(model) and 1 <= int(model.rsplit("-", 1)[1]) <= 99)
    )


def build_router(settings: SandboxSettings) -> APIRouter:
    """The video provider's routes, with their own in-memory state."""
    sandbox = VideoSandbox(settings)
    router = APIRouter(tags=["video"])
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietInjectedDrops) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_QuietInjectedDrops())

    def unauthorized(authorization: str | None) -> JSONResponse | None:
        expected = settings.sandbox_video_api_key
        if expected is None:
            return None
        if authorization != f"Bearer {expected}":
            return _problem(401, "Unauthorized", "missing or wrong API key")
        return None

    def find(render_id: str) -> Render | JSONResponse:
        render = sandbox.renders.get(render_id)
        if render is None or render.deleted:
            return _problem(404, "Not Found", f"no video {render_id!r}")
        return render

    @router.post("/v1/videos", status_code=201)
    async def submit(
        spec: VideoSpec,
        authorization: str | None = Header(default=None),
        idempotency_key: str | None = Header(default=None, max_length=200),
    ) -> Response:
        if denied := unauthorized(authorization):
            return denied
        if not _known_model(spec.model):
            return _problem(400, "Bad Request", f"unknown model {spec.model!r}")
        if spec.model == "sandbox-reject":
            return _problem(400, "Bad Request", "the provider rejects this request (injected)")
        size = sandbox.size_of(spec)
        if size > settings.sandbox_video_max_bytes:
            return _problem(
                400,
                "Bad Request",
                f"the video would be {size} bytes, over the limit of "
                f"{settings.sandbox_video_max_bytes}",
            )
        if idempotency_key is not None and idempotency_key in sandbox.by_key:
            existing = sandbox.renders[sandbox.by_key[idempotency_key]]
            existing.submissions += 1
            return JSONResponse(existing.public(time.monotonic()), status_code=200)
        render = sandbox.create(spec, idempotency_key)
        return JSONResponse(render.public(time.monotonic()), status_code=201)

    @router.get("/v1/videos/{render_id}")
    async def status(render_id: str, authorization: str | None = Header(default=None)) -> Response:
        if denied := unauthorized(authorization):
            return denied
        render = find(render_id)
        if isinstance(render, JSONResponse):
            return render
        render.status_calls += 1
        if failure := sandbox.injected_failure(render):
            return failure
        return JSONResponse(render.public(time.monotonic()))

    @router.get("/v1/videos/{render_id}/content")
    async def content(
        render_id: str,
        authorization: str | None = Header(default=None),
        range_header: str | None = Header(default=None, alias="Range"),
        if_range: str | None = Header(default=None),
    ) -> Response:
        if denied := unauthorized(authorization):
            return denied
        render = find(render_id)
        if isinstance(render, JSONResponse):
            return render
        if failure := sandbox.injected_failure(render):
            return failure
        state, _ = render.status(time.monotonic())
        if state != "succeeded" or render.sha256 is None:
            return _problem(409, "Conflict", f"video {render_id} is {state}, not succeeded")
        etag = f'"{render.sha256}"'
        wanted = parse_range(range_header, render.size) if if_range in (None, etag) else None
        if wanted == "invalid":
            return _problem(
                416,
                "Range Not Satisfiable",
                f"{range_header} is outside the {render.size}-byte file",
                **{"Content-Range": f"bytes */{render.size}"},
            )
        render.content_calls += 1
        render.ranges.append(range_header)
        start, end = wanted if wanted is not None else (0, render.size)
        headers = {
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "X-Content-SHA256": render.sha256,
        }
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{render.size}"
        cut = None
        if render.drop_at is not None and render.content_calls == 1:
            cut = render.size * render.drop_at // 100

        rate = settings.sandbox_video_download_bytes_per_second

        async def body() -> AsyncIterator[bytes]:
            pattern = sandbox.patterns.of(render.id)
            offset = start
            began = time.monotonic()
            # A throttled download goes out in small pieces, so its pace is even.
            piece_size = BLOCK if rate is None else max(4096, min(BLOCK, rate // 20))
            for piece in content_pieces(pattern, start, end, piece_size):
                if rate is not None:
                    ahead = (offset - start) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if cut is not None and offset <= cut < offset + len(piece):
                    head = piece[: cut - offset]
                    if head:
                        render.bytes_served += len(head)
                        yield head
                    await asyncio.sleep(0.05)  # let the head reach the client first
                    raise InjectedDrop(f"download of {render.id} dropped at byte {cut}")
                render.bytes_served += len(piece)
                offset += len(piece)
                yield piece

        return StreamingResponse(
            body(),
            status_code=206 if wanted is not None else 200,
            headers=headers,
            media_type="video/mp4",
        )

    @router.delete("/v1/videos/{render_id}")
    async def cancel(render_id: str, authorization: str | None = Header(default=None)) -> Response:
        if denied := unauthorized(authorization):
            return denied
        render = find(render_id)
        if isinstance(render, JSONResponse):
            return render
        state, _ = render.status(time.monotonic())
        if state in ("queued", "processing"):
            render.cancelled_at = time.monotonic()
            if render.hashing is not None:
                render.hashing.cancel()
            return JSONResponse(render.public(time.monotonic()))
        render.deleted = True
        return JSONResponse({"id": render.id, "object": "video", "status": state, "deleted": True})

    @router.get("/v1/sandbox/video/renders")
    async def stats(job: str | None = Query(default=None, max_length=200)) -> dict[str, Any]:
        now = time.monotonic()
        renders = [r for r in sandbox.renders.values() if job is None or r.key == job]
        return {"renders": [r.stats(now) for r in renders]}

    return router
