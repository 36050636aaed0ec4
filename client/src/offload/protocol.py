"""The Offload HTTP API as requests and answers, shared by `Offload` and `AsyncOffload`.

Nothing here sends anything: each function says what to send (a `Call`) or
reads what came back, so the sync and the async client differ only in
`await` (the sync one is generated from the async one by `client/unasync.py`),
and both shape requests and raise errors in exactly the same way.
"""

import email.utils
import json
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urljoin

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, ValidationError

from offload.errors import ApiError, OffloadError, Problem, WaitTimeout, error_class
from offload.models import FileInfo, Job, JobPage, Webhook, apply_event
from offload_contracts import JobEvent, JobStatus

UploadSource = str | Path | bytes | IO[bytes]
"""What `upload()` takes: a path, the bytes themselves, or a binary file object."""

WebhookSpec = str | Webhook | Mapping[str, Any]
"""A webhook: its URL, or `{"url", "events"?}`."""

OnUpdate = Callable[[Job], None]
"""What `Offload.wait(on_update=...)` calls with the job each time it changes."""

AsyncOnUpdate = Callable[[Job], Awaitable[None] | None]
"""`AsyncOffload.wait`'s hook: a plain function, or a coroutine function it awaits."""


def notify(on_update: OnUpdate | None, job: Job) -> None:
    """Hand the job to the caller's hook, if there is one."""
    if on_update is not None:
        on_update(job)


async def anotify(on_update: AsyncOnUpdate | None, job: Job) -> None:
    """`notify` for the asyncio client: await what the hook returns, if anything.

    Two functions rather than one `if` in `wait()`, so that the blocking client,
    generated from the async one, reads `protocol.notify(...)` there.
    """
    if on_update is not None:
        outcome = on_update(job)
        if outcome is not None:
            await outcome


@dataclass(frozen=True)
class Call:
    """One HTTP request to make, as keyword arguments for `httpx.Client.request`."""

    method: str
    url: str
    params: dict[str, str] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        found: dict[str, Any] = {"method": self.method, "url": self.url, "headers": self.headers}
        if self.params:
            found["params"] = self.params
        if self.json is not None:
            found["json"] = self.json
        return found


@dataclass(frozen=True)
class Endpoints:
    """Where the gateway is, and how to find a job's event stream.

    `notifier`: None follows the job's `links.events` (the gateway knows where its
    notifier is); a base URL replaces the link's origin (a client that reaches the
    notifier under another name); an empty string means never stream, always poll.
    """

    gateway: str
    notifier: str | None

    def api(self, path: str) -> str:
        return self.gateway.rstrip("/") + path

    def job(self, job_id: str) -> str:
        return self.api(f"/v1/jobs/{quote(job_id, safe='')}")

    def file(self, file_id: str) -> str:
        return self.api(f"/v1/files/{quote(file_id, safe='')}")

    def job_events(self, job: Job) -> str | None:
        """The job's SSE stream, or None to poll the gateway instead."""
        if self.notifier == "":
            return None
        if self.notifier is not None:
            return self.notifier.rstrip("/") + f"/v1/jobs/{quote(job.id, safe='')}/events"
        link = job.links.get("events")
        # A link is resolved against the URL it came from (RFC 3986): an absolute one
        # stays as it is.
        return urljoin(self.gateway.rstrip("/") + "/", link) if link else None

    def dead_letters(self, queue: str) -> str:
        return self.api(f"/v1/admin/dead-letters/{quote(queue, safe='')}")


# --------------------------------------------------------------------------- requests


def submit_call(
    endpoints: Endpoints,
    job_type: str,
    job_input: Mapping[str, Any] | BaseModel,
    *,
    webhook: WebhookSpec | None = None,
    idempotency_key: str | None = None,
) -> Call:
    """`POST /v1/jobs` with `{"type", "input", "webhook"?}` and an optional `Idempotency-Key`."""
    if isinstance(job_input, BaseModel):
        payload_input: Any = job_input.model_dump(mode="json", exclude_unset=True)
    else:
        payload_input = dict(job_input)
    body: dict[str, Any] = {"type": job_type, "input": payload_input}
    if webhook is not None:
        body["webhook"] = webhook_body(webhook)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", endpoints.api("/v1/jobs"), json=body, headers=headers)


def webhook_body(webhook: WebhookSpec) -> dict[str, Any]:
    if isinstance(webhook, str):
        spec = Webhook(url=webhook)
    elif isinstance(webhook, Webhook):
        spec = webhook
    else:
        spec = Webhook.model_validate(dict(webhook))
    return spec.model_dump(mode="json", exclude_none=True)


def list_call(
    endpoints: Endpoints,
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call:
    """`GET /v1/jobs?status=&type=&limit=&cursor=` (only the filters given)."""
    params = {
        name: str(value)
        for name, value in (
            ("status", status),
            ("type", job_type),
            ("limit", limit),
            ("cursor", cursor),
        )
        if value is not None
    }
    return Call("GET", endpoints.api("/v1/jobs"), params=params)


def dead_queue(queue: str) -> str:
    """`video` → `video.dead`; a full dead queue name is kept."""
    return queue if queue.endswith(".dead") else f"{queue}.dead"


def dead_letters_call(
    endpoints: Endpoints, queue: str, *, offset: int = 0, limit: int | None = None
) -> Call:
    """`GET /v1/admin/dead-letters/{queue}?offset=&limit=`: read without consuming."""
    params = {"offset": str(offset)}
    if limit is not None:
        params["limit"] = str(limit)
    return Call("GET", endpoints.dead_letters(dead_queue(queue)), params=params)


def replay_call(endpoints: Endpoints, queue: str, job_ids: Sequence[str] | None) -> Call:
    """`POST /v1/admin/dead-letters/{queue}/replay`: these jobs' letters, or all of them."""
    body: dict[str, Any] = {"job_ids": list(job_ids)} if job_ids else {"all": True}
    return Call("POST", endpoints.dead_letters(dead_queue(queue)) + "/replay", json=body)


@dataclass(frozen=True)
class Upload:
    """A file ready to go as the `file` part of a multipart `POST /v1/files`."""

    filename: str
    content: bytes | IO[bytes]
    content_type: str
    opened: IO[bytes] | None = None  # ours to close

    def files(self) -> dict[str, tuple[str, bytes | IO[bytes], str]]:
        return {"file": (self.filename, self.content, self.content_type)}

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


def prepare_upload(
    source: UploadSource, *, filename: str | None = None, content_type: str | None = None
) -> Upload:
    """Open `source` for streaming (a path is read in chunks, never whole)."""
    opened: IO[bytes] | None = None
    content: bytes | IO[bytes]
    if isinstance(source, str | Path):
        path = Path(source)
        opened = path.open("rb")
        content = opened
        filename = filename or path.name
    elif isinstance(source, bytes):
        content = source
    else:
        content = source
        filename = filename or Path(str(getattr(source, "name", "") or "upload")).name
    filename = filename or "upload"
    guessed = mimetypes.guess_type(filename)[0]
    return Upload(filename, content, content_type or guessed or "application/octet-stream", opened)


# --------------------------------------------------------------------------- answers


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds, from either of its forms (delta-seconds or an HTTP date).

    The notifier parses the header too; the client installs with `contracts` alone,
    so it keeps its own parser rather than depend on a service's code.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def problem_of(response: httpx.Response) -> Problem:
    """The response's problem details; a plain-text or HTML error becomes one too."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        if "detail" in body and not isinstance(body["detail"], str):
            # FastAPI's own {"detail": [...]} validation shape: keep the list as `errors`.
            body = {**body, "errors": body["detail"], "detail": "request validation failed"}
        try:
            return Problem.model_validate({"status": response.status_code, **body})
        except ValidationError:
            pass
    text = response.text.strip()[:500] if response.content else ""
    return Problem(title=response.reason_phrase, status=response.status_code, detail=text)


def api_error(response: httpx.Response) -> ApiError:
    """The typed exception for an error response (its body must have been read)."""
    problem = problem_of(response)
    return error_class(response.status_code)(
        problem,
        status=response.status_code,
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


def check(response: httpx.Response) -> httpx.Response:
    """Raise the typed error for a 4xx/5xx answer; pass anything else through."""
    if response.status_code >= 400:
        raise api_error(response)
    return response


def read_json(response: httpx.Response) -> Any:
    check(response)
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OffloadError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code} without JSON"
        ) from exc


def job_of(response: httpx.Response) -> Job:
    return Job.model_validate(read_json(response))


def page_of(response: httpx.Response) -> JobPage:
    return JobPage.model_validate(read_json(response))


def download_target(dest: str | Path, file_id: str, info: FileInfo | None) -> Path:
    """Where `download()` writes: `dest` itself, or a file named after the id in it.

    `dest` is a directory when it is one already or when it ends with a slash
    (`"out/"`, created when missing).
    """
    path = Path(dest)
    if str(dest).endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    suffix = ""
    if info is not None:
        suffix = mimetypes.guess_extension(info.content_type.split(";")[0].strip()) or ""
    return path / f"{file_id}{suffix}"


# --------------------------------------------------------------------------- watching


_STATUS_RANK = {
    JobStatus.WAITING: 0,
    JobStatus.ACTIVE: 1,
    JobStatus.DELAYED: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELLED: 3,
}


def _progress_key(job: Job) -> tuple[int, int, float]:
    """How far a job has got: attempt, then status within the attempt, then percent."""
    return (job.attempt, _STATUS_RANK[job.status], job.percent)


MAX_STREAM_FAILURES = 3
"""SSE connections that may fail in a row before `watch()` falls back to polling."""

SSE_READ_TIMEOUT_S = 45.0
"""The notifier pings every 15 s: this long without a byte means the stream is dead."""


class JobTracker:
    """Follows one job from its SSE events (or polls), deciding when to resume or fall back.

    Both clients' `watch()` loops drive it; it owns the job's latest state, the
    `Last-Event-ID` to resume from, and the deadline.
    """

    def __init__(self, job: Job, *, timeout_s: float | None) -> None:
        self.job = job
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.last_event_id: str | None = None
        self.failures = 0
        self.ended = job.finished
        # The stream starts with the job's whole history, older than the snapshot
        # `job` came from: fold it silently until it has caught up with the snapshot.
        self._replayed: Job | None = job

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise WaitTimeout(self.job, self.timeout_s or 0.0)

    def streaming(self) -> bool:
        """Whether to (re)connect to the SSE stream rather than poll."""
        return not self.ended and self.failures < MAX_STREAM_FAILURES

    def sse_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def sse_timeout(self) -> httpx.Timeout:
        remaining = self.remaining()
        read = SSE_READ_TIMEOUT_S if remaining is None else min(SSE_READ_TIMEOUT_S, remaining)
        return httpx.Timeout(10.0, read=max(read, 0.05))

    def on_sse(self, sse: ServerSentEvent) -> bool:
        """Take one SSE message; True when the job's state changed."""
        if sse.id:
            self.last_event_id = sse.id
        if not sse.data.strip():
            return False
        try:
            event = JobEvent.model_validate_json(sse.data)
        except ValidationError:
            # Not a job event we understand: stop trusting the stream, poll instead.
            self.failures = MAX_STREAM_FAILURES
            return False
        if event.job_id != self.job.id:
            return False
        terminal = event.event.is_terminal
        if self._replayed is not None:
            self._replayed = apply_event(self._replayed, event)
            if not terminal and _progress_key(self._replayed) < _progress_key(self.job):
                return False  # history the snapshot already reflects
            caught_up, self._replayed = self._replayed, None
            return self.take(caught_up, terminal=terminal)
        return self.take(apply_event(self.job, event), terminal=terminal)

    def on_stream_error(self, exc: Exception | None) -> float:
        """Count a failed stream (`None`: it closed before the job ended); seconds to wait."""
        if isinstance(exc, ApiError) and exc.status < 500:
            # 401/403/404 from the notifier will not change by retrying: poll the gateway.
            self.failures = MAX_STREAM_FAILURES
        else:
            self.failures += 1
        if not self.streaming():
            return 0.0  # falling back to polling: no reason to wait
        return min(0.1 * 2**self.failures, 2.0)

    def on_stream_connected(self) -> None:
        self.failures = 0

    def take(self, job: Job, *, terminal: bool | None = None) -> bool:
        """Adopt `job` as the latest state; True when it differs from the previous one."""
        changed = job != self.job
        self.job = job
        self.ended = job.finished if terminal is None else (terminal or job.finished)
        return changed

    def poll_delay(self, interval_s: float) -> float:
        remaining = self.remaining()
        return interval_s if remaining is None else max(0.0, min(interval_s, remaining))
