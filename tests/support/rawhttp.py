"""A raw HTTP/1.1 client over a socket, for requests that a well-behaved client refuses to send.

httpx normalizes `..` segments, validates header values and encodes the
path; a hostile client does none of that. `raw_request` writes the request
head exactly as given and reads the answer until the server closes the
connection, so a test sees the bytes that really went each way.

    answer = await raw_request(gw.base_url, "GET /v1/files/..%2f..%2fetc%2fpasswd HTTP/1.1",
                               {"Authorization": "Bearer k"})
"""

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawAnswer:
    """The answer as it came off the wire."""

    status: int
    head: bytes
    """Status line and header lines, undecoded."""
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def raw_request(
    base_url: str,
    request_line: str | bytes,
    headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    timeout: float = 10,
) -> RawAnswer:
    """Send one request as written and read the whole answer (the connection is closed).

    `Host`, `Connection: close` and (with a body) `Content-Length` are added unless
    given. Header names and values may be bytes, to send what no client library would.
    """
    parts = urlsplit(base_url)
    line = request_line if isinstance(request_line, bytes) else request_line.encode("latin-1")
    given: list[tuple[bytes, bytes]] = (
        [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if isinstance(headers, dict)
        else list(headers or [])
    )
    names = {k.lower() for k, _ in given}
    if b"host" not in names:
        given.insert(0, (b"Host", f"{parts.hostname}:{parts.port}".encode()))
    if b"connection" not in names:
        given.append((b"Connection", b"close"))
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        given.append((b"Content-Length", str(len(body)).encode()))
    wire = line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in given) + b"\r\n" + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(wire)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    data = await asyncio.wait_for(exchange(), timeout)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        raise AssertionError(f"not an HTTP answer: {data[:200]!r}")
    status = int(lines[0].split(b" ", 2)[1])
    parsed = []
    for raw in lines[1:]:
        name, _, value = raw.partition(b":")
        parsed.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in parsed):
        rest = _dechunk(rest)
    return RawAnswer(status=status, head=head, headers=parsed, body=rest)


async def _read_rest(reader: asyncio.StreamReader) -> bytes:
    # A server that answers before reading the whole body closes with unread data,
    # which resets the connection: what arrived before the reset is the answer.
    data = bytearray()
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


@dataclass(frozen=True)
class StreamedAnswer:
    """The answer to a body sent until the server answered, and how much of it went out."""

    answer: RawAnswer
    sent: int
    """Body bytes written to the socket before the answer came (what the server could read)."""


async def stream_until_answered(
    base_url: str,
    request_line: str,
    headers: dict[str, str],
    *,
    chunk: bytes,
    total: int,
    chunked: bool = True,
    timeout: float = 30,
) -> StreamedAnswer:
    """Send up to `total` body bytes in `chunk`s, stopping as soon as the server answers.

    With `chunked`, the body goes as `Transfer-Encoding: chunked` (no size declared);
    otherwise `headers` should declare a `Content-Length`. A server that refuses
    the body early answers after a small part of it was sent; one that reads
    everything makes this send all `total` bytes first.
    """
    parts = urlsplit(base_url)
    given = {"Host": f"{parts.hostname}:{parts.port}", **headers, "Connection": "close"}
    if chunked:
        given["Transfer-Encoding"] = "chunked"
    head = (
        request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in given.items()) + "\r\n"
    ).encode("latin-1")
    piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
    sent = 0

    async def exchange() -> tuple[bytes, int]:
        nonlocal sent
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)

        async def write_body() -> None:
            nonlocal sent
            writer.write(head)
            while sent < total:
                writer.write(piece)
                await writer.drain()
                sent += len(chunk)
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()

        writing = asyncio.create_task(write_body())
        try:
            try:
                first = await reader.read(65536)  # the answer's first bytes (or EOF)
            except ConnectionResetError:
                first = b""
            answered_at = sent
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writing
            return first + await _read_rest(reader), answered_at
        finally:
            writing.cancel()
            writer.close()

    data, answered_at = await asyncio.wait_for(exchange(), timeout)
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        raise AssertionError(f"not an HTTP answer after {answered_at} bytes: {data[:200]!r}")
    status = int(lines[0].split(b" ", 2)[1])
    parsed = [
        (n.decode("latin-1").strip(), v.decode("latin-1").strip())
        for n, _, v in (line.partition(b":") for line in lines[1:])
    ]
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in parsed):
        body = _dechunk(body)
    return StreamedAnswer(RawAnswer(status, head_bytes, parsed, body), answered_at)
