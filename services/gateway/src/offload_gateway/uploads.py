"""An upload as it streams in: the file part of a `multipart/form-data` body, and its type.

Starlette's form parser spools every file to a temporary file before the route
sees it; an upload would then be written twice and could not be refused at the
size limit while it streams. This parser hands the `file` part's chunks on as
the body arrives, so `FileStore.save_stream` hashes and writes them once.

When the client does not say what the file is, its type is read from its first
bytes (`with_type`), so an image sent with `curl --data-binary` is stored, and
served back, as the image it is.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass

import filetype
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MalformedUpload(ValueError):
    """The body is not the multipart form it claims to be."""


class MissingFilePart(ValueError):
    """The form has no part with the expected field name."""


@dataclass
class FilePart:
    """The form's file part: its declared type and name, and its bytes as they stream in."""

    content_type: str | None
    filename: str | None
    chunks: AsyncIterator[bytes]


class _Collector:
    """Callbacks for python-multipart: keeps the target part's headers and data."""

    def __init__(self, field: str) -> None:
        self.field = field.encode()
        self.headers: dict[str, str] = {}
        self._name = bytearray()
        self._value = bytearray()
        self.in_target = False
        self.target_headers: dict[str, str] | None = None
        self.target_ended = False
        self.data: list[bytes] = []

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self._name.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._name.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        if self.target_headers is not None:
            return
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        if params.get(b"name") == self.field:
            self.in_target = True
            self.target_headers = self.headers

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_target:
            self.data.append(data[start:end])

    def on_part_end(self) -> None:
        if self.in_target:
            self.in_target = False
            self.target_ended = True


def boundary_of(content_type: str) -> str:
    """The boundary of a `multipart/form-data` Content-Type, or MalformedUpload."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUpload("multipart/form-data needs a boundary parameter")
    return boundary.decode("latin-1")


async def file_part(body: AsyncIterator[bytes], boundary: str, *, field: str = "file") -> FilePart:
    """Read the form up to the start of its `field` part; its data streams on from there."""
    collector = _Collector(field)
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
        },
    )

    def feed(chunk: bytes) -> None:
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise MalformedUpload(f"the multipart body is malformed: {exc}") from exc

    stream = aiter(body)
    async for chunk in stream:
        feed(chunk)
        if collector.target_headers is not None:
            break
    else:
        raise MissingFilePart(f"the form has no `{field}` part")

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            if collector.data:
                pending, collector.data = collector.data, []
                for piece in pending:
                    yield piece
            if collector.target_ended:
                return
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                raise MalformedUpload("the body ended inside the file part") from None
            feed(chunk)

    headers = collector.target_headers
    _, disposition = parse_options_header(headers.get("content-disposition", ""))
    filename = disposition.get(b"filename")
    content_type = headers.get("content-type")
    return FilePart(
        content_type=content_type.strip() if content_type else None,
        filename=filename.decode("utf-8", "replace") if filename else None,
        chunks=chunks(),
    )


UNSTATED_TYPES = frozenset({"application/octet-stream", "application/x-www-form-urlencoded"})
"""Labels that say nothing about a file: the generic one, and the one curl puts on
`--data-binary` when told nothing else."""
UNKNOWN_TYPE = "application/octet-stream"
SIGNATURE_BYTES = 8192
"""What `filetype` reads of a file: every signature it knows lies within it."""


async def with_type(
    chunks: AsyncIterator[bytes], declared: str | None
) -> tuple[str, AsyncIterator[bytes]]:
    """The upload's type and its bytes, unchanged: as declared, else read from its first bytes.

    Only known signatures count (images, video, audio, archives, documents); bytes
    without one stay `application/octet-stream`.
    """
    if declared is not None and declared not in UNSTATED_TYPES:
        return declared, chunks
    stream = aiter(chunks)
    head: list[bytes] = []
    size = 0
    async for chunk in stream:
        head.append(chunk)
        size += len(chunk)
        if size >= SIGNATURE_BYTES:
            break
    kind = filetype.guess(b"".join(head)[:SIGNATURE_BYTES]) if size else None

    async def replayed() -> AsyncIterator[bytes]:
        for chunk in head:
            yield chunk
        async for chunk in stream:
            yield chunk

    return (kind.mime if kind is not None else UNKNOWN_TYPE), replayed()
