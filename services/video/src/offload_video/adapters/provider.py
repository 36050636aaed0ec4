"""The video provider over HTTP (the sandbox's API, shaped like OpenAI's `/v1/videos`).

Library errors become the runtime's taxonomy here, so the domain never sees httpx:
timeouts, dropped connections, 408/425/429 and 5xx are `TransientError` (with the
provider's `Retry-After`), 404 on a render is `RenderNotFound`, 416 on a resume is
`RangeNotSatisfiable`, any other 4xx is `PermanentError`.
"""

import email.utils
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, NoReturn

import httpx

from offload_runtime.errors import PermanentError, TransientError
from offload_video.generation import (
    RangeNotSatisfiable,
    RenderNotFound,
    RenderSpec,
    RenderState,
    RenderStatus,
)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRANSIENT_4XX = frozenset({408, 425, 429})

_STATUS_NAMES: Mapping[str, RenderStatus] = {
    "queued": "queued",
    "processing": "processing",
    "in_progress": "processing",  # OpenAI's name
    "succeeded": "succeeded",
    "completed": "succeeded",  # OpenAI's name
    "failed": "failed",
    "cancelled": "cancelled",
}


def build_client(
    base_url: str, *, api_key: str | None, timeout_s: float, max_connections: int
) -> httpx.AsyncClient:
    """One pooled client per process, shared by every job it runs."""
    headers = {"Accept-Encoding": "identity"}  # byte offsets must be the file's own
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=max_connections),
        follow_redirects=False,
    )


def retry_after_of(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), if present and sane."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        return str(body.get("detail") or body.get("title") or body)[:200]
    return str(body)[:200]


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Translate an error answer into the runtime's taxonomy (needs the body read)."""
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    message = f"the video provider answered {status} to {what}: {detail}"
    if status >= 500 or status in _TRANSIENT_4XX:
        raise TransientError(message, retry_after=retry_after_of(response))
    if status == 404:
        raise RenderNotFound(message)
    if status == 416:
        raise RangeNotSatisfiable(message)
    raise PermanentError(message)


def _transport_error(exc: httpx.HTTPError, what: str) -> NoReturn:
    raise TransientError(f"video provider unreachable during {what}: {exc!r}") from exc


class HttpDownload:
    """An open content response."""

    def __init__(
        self, response: httpx.Response, *, offset: int, total: int, sha256: str | None
    ) -> None:
        self._response = response
        self.offset = offset
        self.total = total
        self.sha256 = sha256

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            _transport_error(exc, "the download")


class HttpVideoProvider:
    """`VideoProvider` over HTTP."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _call(
        self, method: str, path: str, what: str, *, json: Any = None, headers: Any = None
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            _transport_error(exc, what)
        raise_for_status(response, what)
        return response

    async def submit(self, spec: RenderSpec, *, idempotency_key: str) -> str:
        response = await self._call(
            "POST",
            "/v1/videos",
            "the submit",
            json={
                "prompt": spec.prompt,
                "duration_s": spec.duration_s,
                "resolution": spec.resolution,
                "model": spec.model,
            },
            headers={"Idempotency-Key": idempotency_key},
        )
        render_id = _json(response).get("id")
        if not isinstance(render_id, str) or not render_id:
            raise TransientError("the video provider accepted the render but gave no id")
        return render_id

    async def status(self, render_id: str) -> RenderState:
        response = await self._call("GET", f"/v1/videos/{render_id}", "a status poll")
        body = _json(response)
        status = _STATUS_NAMES.get(str(body.get("status")))
        if status is None:
            raise TransientError(f"unknown render status {body.get('status')!r}")
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("code")
        size = body.get("bytes")
        sha256 = body.get("sha256")
        return RenderState(
            status=status,
            progress=float(body.get("progress") or 0),
            bytes=size if isinstance(size, int) else None,
            sha256=sha256 if isinstance(sha256, str) and _SHA256.match(sha256) else None,
            error=str(error) if error else None,
        )

    @asynccontextmanager
    async def download(
        self, render_id: str, *, offset: int, if_sha256: str | None
    ) -> AsyncIterator[HttpDownload]:
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_sha256:
                headers["If-Range"] = f'"{if_sha256}"'  # a changed file comes whole
        request = self._client.build_request(
            "GET", f"/v1/videos/{render_id}/content", headers=headers
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            _transport_error(exc, "the download")
        try:
            if response.status_code >= 400:
                try:
                    await response.aread()
                except httpx.HTTPError as exc:
                    _transport_error(exc, "the download")
                raise_for_status(response, "the download")
            yield _open_download(response, render_id)
        finally:
            await response.aclose()

    async def cancel(self, render_id: str) -> None:
        with suppress(RenderNotFound):  # already gone: nothing left to stop
            await self._call("DELETE", f"/v1/videos/{render_id}", "the cancel")


def _open_download(response: httpx.Response, render_id: str) -> HttpDownload:
    sha256 = response.headers.get("X-Content-SHA256")
    if sha256 is None:
        etag = response.headers.get("ETag", "").strip('"')
        sha256 = etag if _SHA256.match(etag) else None
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match:
            raise TransientError(f"{render_id}: a 206 without a usable Content-Range")
        start, _, total = (int(part) for part in match.groups())
        return HttpDownload(response, offset=start, total=total, sha256=sha256)
    length = response.headers.get("Content-Length")
    if response.status_code != 200 or length is None or not length.isdigit():
        raise TransientError(
            f"{render_id}: content answered {response.status_code} without a Content-Length"
        )
    return HttpDownload(response, offset=0, total=int(length), sha256=sha256)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise TransientError("the video provider answered with invalid JSON") from exc
    if not isinstance(body, dict):
        raise TransientError("the video provider answered with unexpected JSON")
    return body
