"""`/v1/files`: upload (multipart or raw body, streamed, size-limited) and ranged download."""

import asyncio
import os
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from offload_contracts import FileRef
from offload_gateway import metrics
from offload_gateway.deps import Deps, Tenant
from offload_gateway.problems import ProblemError, problem_responses
from offload_gateway.uploads import (
    MalformedUpload,
    MissingFilePart,
    boundary_of,
    file_part,
    with_type,
)
from offload_runtime.echo import quoted
from offload_runtime.storage import FileTooLarge, file_ref

router = APIRouter(prefix="/v1/files", tags=["files"])

_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_MULTIPART_OVERHEAD = 64 * 1024
"""Room for the form's boundaries and part headers around the file itself."""

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
    "description": "A form with a `file` part, or the file itself as the body. Its "
    "`Content-Type` is kept; without one, or with `application/octet-stream` (or the "
    "`application/x-www-form-urlencoded` curl puts on `--data-binary`), the type is "
    "detected from the file's first bytes.",
}


class _Download(FileResponse):
    # One thread hop per MiB rather than per 64 KiB.
    chunk_size = 1024 * 1024


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    media = value.split(";", 1)[0].strip().lower()
    return media if _MEDIA_TYPE.match(media) else None


@router.post(
    "",
    status_code=201,
    response_model=FileRef,
    summary="Upload a file",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        201: {
            "description": "Stored; `Location` is its download URL.",
            "headers": {"Location": {"description": "The file.", "schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 413, 415, 422),
    },
)
async def upload_file(request: Request, deps: Deps, tenant: Tenant) -> Response:
    """Stream the body to storage, hashing it on the way; refused past the size limit (413)."""
    limit = deps.settings.max_upload_bytes
    header = request.headers.get("content-type", "")
    is_form = header.split(";", 1)[0].strip().lower() == "multipart/form-data"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + (_MULTIPART_OVERHEAD if is_form else 0):
        raise ProblemError(413, f"the file is larger than the limit of {limit} bytes")
    chunks: AsyncIterator[bytes]
    try:
        if is_form:
            part = await file_part(request.stream(), boundary_of(header))
            declared, chunks = _media_type(part.content_type), part.chunks
        else:
            if header and _media_type(header) is None:
                raise ProblemError(415, f"Content-Type {quoted(header)} is not a media type")
            declared, chunks = _media_type(header), request.stream()
        content_type, chunks = await with_type(chunks, declared)
        stored = await deps.files.save_stream(tenant, chunks, content_type, max_bytes=limit)
    except FileTooLarge as exc:
        raise ProblemError(413, f"the file is larger than the limit of {exc.limit} bytes") from exc
    except MalformedUpload as exc:
        raise ProblemError(400, str(exc)) from exc
    except MissingFilePart as exc:
        raise ProblemError(422, str(exc), title="Invalid request") from exc
    if stored.bytes == 0:
        await deps.files.delete(stored.id)
        raise ProblemError(422, "the file is empty", title="Invalid request")
    metrics.UPLOADED_BYTES.inc(stored.bytes)
    return Response(
        file_ref(stored).model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": stored.url},
    )


@router.get(
    "/{file_id}",
    summary="Download a file",
    response_class=Response,
    responses={
        200: {
            "description": "The file, streamed; `ETag` is its quoted SHA-256.",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        206: {"description": "The requested byte range(s) (`Range: bytes=…`)."},
        304: {"description": "Not modified: `If-None-Match` matched the ETag."},
        **problem_responses(400, 401, 404, 416),
    },
)
async def download_file(file_id: str, request: Request, deps: Deps, tenant: Tenant) -> Response:
    """The file's bytes, streamed from storage, with `Range` support."""
    stored = await deps.files.get(tenant, file_id)
    if stored is None:
        raise ProblemError(404, f"no file {quoted(file_id)}")
    try:
        stat = await asyncio.to_thread(os.stat, stored.path)
    except FileNotFoundError:
        raise ProblemError(404, f"no file {quoted(file_id)}") from None
    etag = f'"{stored.sha256}"'
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    wanted = request.headers.get("range")
    if wanted is not None:
        try:
            # FileResponse's own parser, so what is checked here is what it serves.
            FileResponse._parse_range_header(wanted, stat.st_size)
        except MalformedRangeHeader as exc:
            raise ProblemError(400, f"malformed Range header: {exc.content}") from exc
        except RangeNotSatisfiable:
            raise ProblemError(
                416,
                f"the range is outside the file ({stat.st_size} bytes)",
                headers={"Content-Range": f"bytes */{stat.st_size}"},
            ) from None
    return _Download(
        stored.path,
        media_type=stored.content_type,
        stat_result=stat,
        headers={
            "ETag": etag,
            "Cache-Control": "private, max-age=31536000, immutable",
            # A file is served with the type it was uploaded with, which a user
            # chooses; a browser must neither sniff another nor run what it holds.
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )
