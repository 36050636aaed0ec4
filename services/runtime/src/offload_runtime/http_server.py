"""Serving HTTP: one uvicorn set-up for every Offload process that answers HTTP
(the gateway, the notifier and the sandbox), on uvloop and httptools.

uvicorn bounds the idle time between two requests on a connection
(keep-alive), but neither how long a client may take to send a request's head
nor how large that head may be: a client that sends its headers a byte a
second holds its connection for as long as it keeps trickling (slowloris), and
one that sends megabytes of headers has them all buffered. `HeadLimits`, the
protocol every service serves with, closes a connection whose request line and
headers are not complete within `header_timeout_s` of its first byte (or of
the connection opening, for a client that sends nothing) with a 408, and
refuses a head over `max_header_bytes` with a 431.

Neither bound touches a request's body or its response: an upload may be slow
and an SSE stream lasts for hours. What a reverse proxy should still add in
front (TLS, rates, connection counts per address, body time) is in the
README's "Security and deployment" section.
"""

import asyncio
import gc
import sys
from typing import Any, ClassVar

import uvicorn
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from offload_runtime.settings import HttpServerSettings

HEADS_REFUSED = Counter(
    "offload_http_heads_refused_total",
    "Connections closed before their request's head was read: `timeout` (408: not complete "
    "within OFFLOAD_HTTP_HEADER_TIMEOUT_S) or `too_large` (431: over "
    "OFFLOAD_HTTP_MAX_HEADER_BYTES).",
    ["reason"],
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that passed the size bound."""


class HeadLimits(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on each request's head.

    The bounds are class attributes because uvicorn builds one protocol object
    per connection from the class alone: `head_limits(...)` makes a subclass
    with the configured values.
    """

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 65_536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started = False  # some of the current request's head has arrived
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # Parser callbacks: a request's head runs from its first byte to the end of its headers.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._head_bytes = 0
        self._arm()  # a later request on a kept-alive connection gets its own deadline

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to whatever stops the parser; an exception raised from
        # a callback (here `_HeadTooLarge`) is one of those.
        if self._head_bytes > self.max_header_bytes:
            HEADS_REFUSED.labels("too_large").inc()
            self._refuse(431, "Request Header Fields Too Large", "request head too large")
        else:
            super().send_400_response(msg)

    # ------------------------------------------------------------------ internals

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            raise _HeadTooLarge

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        HEADS_REFUSED.labels("timeout").inc()
        if self._head_started:
            self._refuse(408, "Request Timeout", "request head not received in time")
        else:
            self.transport.close()  # nothing was asked: nothing to answer

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        body = message.encode()
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def head_limits(*, header_timeout_s: float, max_header_bytes: int) -> type[HeadLimits]:
    """The protocol class to give uvicorn (`http=`) for these bounds."""
    return type(
        "HeadLimits",
        (HeadLimits,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )


def serve_http(
    app: Any, settings: HttpServerSettings, *, host: str, port: int, graceful_shutdown_s: int
) -> None:
    """Serve `app` until SIGINT/SIGTERM; in-flight requests get `graceful_shutdown_s` after it.

    The process exits with `app.state.exit_code` when the app set one (a
    notifier whose consumer watchdog gave up), for its supervisor to restart it.

    Logging is the service's own (structlog, configured when the app starts):
    uvicorn's configuration and access log are off; request metrics replace the latter.
    """
    # Everything imported and built so far lives as long as the process: keep it
    # out of the collector's full passes, which otherwise rescan it every few
    # thousand requests' worth of short-lived objects (and pause every client).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=head_limits(
            header_timeout_s=settings.http_header_timeout_s,
            max_header_bytes=settings.http_max_header_bytes,
        ),
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
    code = getattr(getattr(app, "state", None), "exit_code", 0)
    if code:
        sys.exit(code)
