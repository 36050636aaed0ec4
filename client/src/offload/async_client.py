"""`AsyncOffload`: the asyncio client, for FastAPI views, workers and scripts.

`client.py` is generated from this file by `make unasync`: edit only this one.
"""

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import aconnect_sse
from pydantic import BaseModel

from offload import protocol
from offload.errors import ApiError, ChecksumMismatch, ConnectionFailed, OffloadError
from offload.models import DeadLetterPage, FileInfo, Job, JobPage, ReplayReport
from offload.protocol import AsyncOnUpdate, Call, Endpoints, JobTracker, UploadSource, WebhookSpec
from offload.settings import ClientSettings


class AsyncOffload:
    """Submit jobs to Offload and follow them, with asyncio.

    ```python
    async with AsyncOffload() as offload:  # OFFLOAD_URL, OFFLOAD_API_KEY, ...
        job = await offload.submit("ai.generate", {"prompt": "Write a haiku"})
        done = await offload.wait(job.id, timeout_s=120)
    ```

    Arguments left out come from `ClientSettings` (environment variables).
    `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        notifier_url: str | None = None,
        admin_key: str | None = None,
        timeout_s: float | None = None,
        settings: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = settings or ClientSettings()
        self.endpoints = Endpoints(
            gateway=url or settings.url,
            notifier=notifier_url if notifier_url is not None else settings.notifier_url,
        )
        self._api_key = api_key or settings.api_key
        self._admin_key = admin_key or settings.admin_key or self._api_key
        self._http = httpx.AsyncClient(
            timeout=timeout_s or settings.timeout_s,
            transport=transport,
            headers={"User-Agent": "offload-client/0.1"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------- plumbing

    def _auth(self, *, admin: bool = False) -> dict[str, str]:
        key = self._admin_key if admin else self._api_key
        if not key:
            raise OffloadError(
                "no API key: set OFFLOAD_API_KEY (or pass --api-key / api_key=); "
                "`make run` prints the development key"
            )
        return {"Authorization": f"Bearer {key}"}

    async def _send(self, call: Call, *, admin: bool = False) -> httpx.Response:
        kwargs = call.kwargs()
        kwargs["headers"] = {**self._auth(admin=admin), **kwargs["headers"]}
        try:
            return await self._http.request(**kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"{call.method} {call.url}: {exc or type(exc).__name__}"
            ) from exc

    # ----------------------------------------------------------------- jobs

    async def submit(
        self,
        type: str,
        input: Mapping[str, Any] | BaseModel,
        *,
        webhook: WebhookSpec | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Enqueue a job; returns at once with the job (`waiting`) and its id.

        `input` is checked by the gateway against the type's contract
        (`ValidationFailed` lists the bad fields). With an `idempotency_key`,
        submitting the same body again returns the same job.
        """
        call = protocol.submit_call(
            self.endpoints, type, input, webhook=webhook, idempotency_key=idempotency_key
        )
        return protocol.job_of(await self._send(call))

    async def get(self, job_id: str) -> Job:
        """The job's current state (`NotFound` for an unknown job or another tenant's)."""
        return protocol.job_of(await self._send(Call("GET", self.endpoints.job(job_id))))

    async def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of the tenant's jobs, newest first; pass `next_cursor` on for the next."""
        call = protocol.list_call(
            self.endpoints, status=status, job_type=type, limit=limit, cursor=cursor
        )
        return protocol.page_of(await self._send(call))

    async def iter_jobs(
        self, *, status: str | None = None, type: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        """Every job of the tenant matching the filters, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list(status=status, type=type, limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not finished (`Conflict` if it has)."""
        response = await self._send(Call("DELETE", self.endpoints.job(job_id)))
        protocol.check(response)
        if response.content:
            return protocol.job_of(response)
        return await self.get(job_id)

    async def watch(
        self, job_id: str, *, timeout_s: float | None = None, poll_interval_s: float = 1.0
    ) -> AsyncGenerator[Job, None]:
        """Yield the job each time it changes, until it finishes.

        Follows the job's `links.events` SSE stream on the notifier (resuming with
        `Last-Event-ID` when the connection drops); when it cannot be used, polls the gateway
        every `poll_interval_s` instead. Raises `WaitTimeout` after `timeout_s`.
        To stop early, close it: `async with contextlib.aclosing(offload.watch(id)) as jobs:`
        so the SSE connection is released at once rather than when garbage-collected.
        """
        tracker = JobTracker(await self.get(job_id), timeout_s=timeout_s)
        yield tracker.job
        url = self.endpoints.job_events(tracker.job)
        while url and tracker.streaming():
            tracker.check_deadline()
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    url,
                    headers={**self._auth(), **tracker.sse_headers()},
                    timeout=tracker.sse_timeout(),
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        protocol.check(source.response)
                    tracker.on_stream_connected()
                    async for sse in source.aiter_sse():
                        if tracker.on_sse(sse):
                            yield tracker.job
                        if not tracker.streaming():
                            break
                if tracker.ended:
                    # The terminal event carries the result; the job itself has the rest.
                    tracker.take(await self.get(job_id))
                    yield tracker.job
                    return
                delay = tracker.on_stream_error(None)
            except (httpx.TransportError, ApiError) as exc:
                delay = tracker.on_stream_error(exc)
            tracker.check_deadline()
            await asyncio.sleep(tracker.poll_delay(delay))
        while not tracker.ended:
            tracker.check_deadline()
            await asyncio.sleep(tracker.poll_delay(poll_interval_s))
            if tracker.take(await self.get(job_id)):
                yield tracker.job

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_update: AsyncOnUpdate | None = None,
        poll_interval_s: float = 1.0,
    ) -> Job:
        """Wait for the job to finish and return it (completed, failed or cancelled).

        `on_update(job)` is called with every change on the way (it may be async).
        """
        last: Job | None = None
        async for job in self.watch(job_id, timeout_s=timeout_s, poll_interval_s=poll_interval_s):
            last = job
            await protocol.anotify(on_update, job)
        assert last is not None  # watch() always yields the job at least once
        return last

    # ----------------------------------------------------------------- files

    async def upload(
        self,
        source: UploadSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> FileInfo:
        """Store a file (streamed from disk when given a path); use its `id` in job inputs."""
        upload = protocol.prepare_upload(source, filename=filename, content_type=content_type)
        url = self.endpoints.api("/v1/files")
        try:
            response = await self._http.post(url, files=upload.files(), headers=self._auth())
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"POST {url}: {exc or type(exc).__name__}") from exc
        finally:
            upload.close()
        return FileInfo.model_validate(protocol.read_json(response))

    async def download(
        self, file: str | FileInfo, dest: str | Path, *, chunk_size: int = 1 << 20
    ) -> Path:
        """Stream a file to `dest` (a path, or a directory to put it in) and return its path.

        Given a `FileInfo` with a SHA-256 (a job's result file), the bytes are
        checked against it; a mismatch leaves no file behind.
        """
        info = file if isinstance(file, FileInfo) else None
        file_id = info.id if info else str(file)
        target = protocol.download_target(dest, file_id, info)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        url = self.endpoints.file(file_id)
        try:
            async with self._http.stream("GET", url, headers=self._auth()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    protocol.check(response)
                with partial.open("wb") as out:
                    async for chunk in response.aiter_bytes(chunk_size):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(f"GET {url}: {exc or type(exc).__name__}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if info and info.sha256 and digest.hexdigest() != info.sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(f"file {file_id}: got {digest.hexdigest()}, want {info.sha256}")
        os.replace(partial, target)
        return target

    # ----------------------------------------------------------------- webhooks

    async def webhook_secret(self) -> dict[str, Any]:
        """The tenant's webhook signing secret(s) (`whsec_…`)."""
        response = await self._send(Call("GET", self.endpoints.api("/v1/webhook-secret")))
        return dict(protocol.read_json(response))

    async def rotate_webhook_secret(self) -> dict[str, Any]:
        """Start signing with a new secret; the old one keeps signing during the rotation."""
        call = Call("POST", self.endpoints.api("/v1/webhook-secret/rotate"))
        return dict(protocol.read_json(await self._send(call)))

    # ----------------------------------------------------------------- admin

    async def queues(self) -> Any:
        """Per queue: ready, unacked, consumers, dead letters (admin key)."""
        call = Call("GET", self.endpoints.api("/v1/admin/queues"))
        return protocol.read_json(await self._send(call, admin=True))

    async def dead_letters(
        self, queue: str, *, offset: int = 0, limit: int | None = None
    ) -> DeadLetterPage:
        """A page of a dead-letter queue (`video` or `video.dead`), read without consuming it.

        Needs an admin key (`admin_key=` or OFFLOAD_ADMIN_KEY).
        """
        call = protocol.dead_letters_call(self.endpoints, queue, offset=offset, limit=limit)
        return DeadLetterPage.model_validate(protocol.read_json(await self._send(call, admin=True)))

    async def replay_dead_letters(
        self, queue: str, *, job_ids: Sequence[str] | None = None
    ) -> ReplayReport:
        """Put failed jobs back to `waiting` and queue them again: these jobs', or all.

        Needs an admin key (`admin_key=` or OFFLOAD_ADMIN_KEY).
        """
        call = protocol.replay_call(self.endpoints, queue, job_ids)
        return ReplayReport.model_validate(protocol.read_json(await self._send(call, admin=True)))
