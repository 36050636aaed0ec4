"""Slow and oversized request heads: every HTTP service, as the real process users run.

A client that sends its request headers a byte at a time (slowloris), or
connects and sends nothing, must not hold a connection for longer than
`OFFLOAD_HTTP_HEADER_TIMEOUT_S` (1 s here); a request head larger than
`OFFLOAD_HTTP_MAX_HEADER_BYTES` is refused. Neither bound may touch what a
normal client does: a slow upload body, a long SSE stream, a kept-alive
connection idle between two requests.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from tests.security.report import record
from tests.support.infra import Infra
from tests.support.rawhttp import raw_request
from tests.support.serving import free_port
from tests.support.stack import API_KEY, Stack, running_stack

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16_384
# Closing within the bound, measured from outside the process on a loaded 2-core machine.
SLACK_S = 1.5
TRICKLE_FOR_S = 8.0


@pytest.fixture(scope="module")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    async with running_stack(
        infra,
        http_header_timeout_s=HEADER_TIMEOUT_S,
        http_max_header_bytes=MAX_HEADER_BYTES,
        sse_ping_s=0.3,
    ) as stack:
        stack.start("notifier", "offload_notifier", notifier_port=free_port())
        await stack.wait_ready(notifier_url(stack), "/readyz")
        yield stack


def notifier_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.processes['notifier'].env['OFFLOAD_NOTIFIER_PORT']}"


def services(stack: Stack) -> dict[str, str]:
    return {
        "gateway": stack.gateway_url,
        "notifier": notifier_url(stack),
        "sandbox": f"http://127.0.0.1:{stack.settings['sandbox_port']}",
    }


async def connect(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(base_url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def held_for(base_url: str, *, trickle: bool) -> tuple[float, bytes]:
    """How long the server keeps a connection whose head never completes, and its answer."""
    reader, writer = await connect(base_url)
    began = time.monotonic()
    answer = bytearray()

    async def read_until_closed() -> None:
        while chunk := await reader.read(4096):
            answer.extend(chunk)

    reading = asyncio.create_task(read_until_closed())
    try:
        if trickle:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while not reading.done() and time.monotonic() - began < TRICKLE_FOR_S:
                try:
                    writer.write(b"a")
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.wait({reading}, timeout=0.1)
        await asyncio.wait_for(asyncio.shield(reading), TRICKLE_FOR_S)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        reading.cancel()
        writer.close()
    return time.monotonic() - began, bytes(answer)


async def test_a_head_that_trickles_or_never_comes_is_cut_off_at_the_bound(stack: Stack) -> None:
    targets = services(stack)
    per_service = 30
    results: dict[str, list[tuple[float, bytes]]] = {}
    for name, base_url in targets.items():
        trickling = [held_for(base_url, trickle=True) for _ in range(per_service)]
        silent = [held_for(base_url, trickle=False) for _ in range(5)]
        # A normal client, meanwhile, is served as usual.
        normal = raw_request(base_url, "GET /healthz HTTP/1.1", timeout=5)
        *held, answer = await asyncio.gather(*trickling, *silent, normal)
        assert answer.status == 200, (name, answer)
        results[name] = held
    for name, held in results.items():
        trickled, silent = held[:per_service], held[per_service:]
        slowest = max(seconds for seconds, _ in held)
        assert slowest < HEADER_TIMEOUT_S + SLACK_S, (name, sorted(s for s, _ in held)[-5:])
        assert all(a.startswith(b"HTTP/1.1 408 ") for _, a in trickled), (name, trickled[:2])
        assert all(a == b"" for _, a in silent), (name, silent[:2])  # nothing asked: no answer
    record(
        "slow request heads (gateway, notifier, sandbox)",
        f"per service {per_service} connections sending their headers a byte every 0.1 s "
        f"for up to {TRICKLE_FOR_S:g} s, and 5 sending nothing; "
        f"OFFLOAD_HTTP_HEADER_TIMEOUT_S={HEADER_TIMEOUT_S:g}",
        "every one closed within "
        + ", ".join(f"{name} {max(s for s, _ in held):.2f} s" for name, held in results.items())
        + " (trickling ones answered 408, silent ones closed); a normal request meanwhile: 200",
    )


async def test_the_bound_leaves_slow_bodies_long_streams_and_idle_keep_alive_alone(
    stack: Stack,
) -> None:
    # An upload whose body takes three times the head bound to arrive.
    reader, writer = await connect(stack.gateway_url)
    body = b"x" * 3000
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {API_KEY}\r\n".encode()
        + b"Content-Type: application/octet-stream\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for start in range(0, len(body), 250):
        writer.write(body[start : start + 250])
        await writer.drain()
        await asyncio.sleep(HEADER_TIMEOUT_S * 3 / 12)
    upload = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert upload.startswith(b"HTTP/1.1 201 "), upload[:300]

    # An SSE stream open for three times the bound keeps receiving its pings.
    reader, writer = await connect(notifier_url(stack))
    writer.write(
        b"GET /v1/events HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    await writer.drain()
    received = bytearray()
    deadline = time.monotonic() + HEADER_TIMEOUT_S * 3
    while time.monotonic() < deadline:
        chunk = await asyncio.wait_for(reader.read(4096), 2)
        assert chunk, "the stream was closed"
        received += chunk
    writer.close()
    assert received.startswith(b"HTTP/1.1 200 ") and received.count(b": ping") >= 3, received

    # A kept-alive connection idle for longer than the head bound (but within
    # uvicorn's keep-alive of 5 s) serves its next request.
    reader, writer = await connect(stack.gateway_url)
    answers = []
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        answers.append(head.split(b"\r\n")[0])
        await asyncio.sleep(HEADER_TIMEOUT_S * 1.5)
    writer.close()
    assert answers == [b"HTTP/1.1 200 OK"] * 2


async def test_a_request_head_over_the_size_bound_is_431(stack: Stack) -> None:
    for name, base_url in services(stack).items():
        small = await raw_request(base_url, "GET /healthz HTTP/1.1", {"X-Pad": "a" * 8000})
        large = await raw_request(
            base_url, "GET /healthz HTTP/1.1", {"X-Pad": "a" * (MAX_HEADER_BYTES + 1)}
        )
        assert small.status == 200, (name, small)
        assert large.status == 431, (name, large)
