"""A TCP proxy between a client and RabbitMQ that reads AMQP frames, to stage broker faults.

    async with amqp_proxy(5672) as proxy:
        url = proxy.url_for(infra.rabbitmq_url)
        proxy.cut_on("basic.consume")        # a broker restart at that very moment
        await proxy.cancel_consumers()       # the broker drops subscriptions behind their back

It stages, at an exact point of the protocol, what a real broker does at a
random one: going away while a declare or a consume is in flight, and
dropping a consumer (RabbitMQ sends `basic.cancel` when a quorum queue's
leader moves; the silent variant is one the client never hears of).
"""

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

METHODS = {
    "channel.open": (20, 10),
    "exchange.declare": (40, 10),
    "queue.declare": (50, 10),
    "queue.bind": (50, 20),
    "basic.qos": (60, 10),
    "basic.consume": (60, 20),
    "confirm.select": (85, 10),
}
_CONSUME_OK = (60, 21)
_CANCEL = (60, 30)
_FRAME_METHOD = 1
_FRAME_END = b"\xce"


def _method_frame(channel: int, method: tuple[int, int], arguments: bytes) -> bytes:
    payload = struct.pack(">HH", *method) + arguments
    return struct.pack(">BHI", _FRAME_METHOD, channel, len(payload)) + payload + _FRAME_END


def _cancel_frame(channel: int, consumer_tag: bytes) -> bytes:
    # basic.cancel: consumer-tag (shortstr), then no-wait set: nobody answers it.
    return _method_frame(channel, _CANCEL, bytes([len(consumer_tag)]) + consumer_tag + b"\x01")


class _Frames:
    """Splits a byte stream into whole AMQP frames."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 7:
            size = struct.unpack(">I", self._buffer[3:7])[0]
            if len(self._buffer) < 8 + size:
                break
            frames.append(self._buffer[: 8 + size])
            self._buffer = self._buffer[8 + size :]
        return frames


def _method_of(frame: bytes) -> tuple[int, int] | None:
    if frame[0] != _FRAME_METHOD or len(frame) < 11:
        return None
    cls, method = struct.unpack(">HH", frame[7:11])
    return cls, method


def _channel_of(frame: bytes) -> int:
    channel: int = struct.unpack(">H", frame[1:3])[0]
    return channel


@dataclass(frozen=True)
class _Cut:
    method: tuple[int, int]
    nth: int
    after: bool


@dataclass
class _Link:
    to_server: asyncio.StreamWriter
    to_client: asyncio.StreamWriter
    consumers: dict[bytes, int] = field(default_factory=dict)
    """Consumer tag → channel, as the broker confirmed them (consume-ok)."""


class AmqpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: list[_Link] = []
        self._cut: _Cut | None = None
        self._seen = 0
        self._down_until = 0.0
        self._down_s = 0.0
        self.cuts = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url_for(self, url: str) -> str:
        """`url` (the broker's), going through this proxy instead."""
        parts = urlsplit(url)
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut_on(
        self, method: str, nth: int = 1, *, after: bool = False, down_s: float = 0.5
    ) -> None:
        """At the `nth` `method` a client sends, every link drops, as when the broker stops.

        `after`: the broker receives the method first (it takes effect, its reply is lost).
        New connections are refused for `down_s`, then accepted again (the broker is back).
        """
        self._cut = _Cut(METHODS[method], nth, after)
        self._seen = 0
        self._down_s = down_s

    def go_down(self, seconds: float) -> None:
        """Every link drops now and connections are refused for `seconds`."""
        self._drop_all(seconds)

    async def cancel_consumers(self, *, tell_clients: bool = False) -> int:
        """The broker drops every consumer it confirmed; the count dropped.

        Without `tell_clients`, the client is never told: its library believes
        it still consumes. With it, the client gets RabbitMQ's consumer-cancel
        notification, as when a quorum queue's leader moves.
        """
        dropped = 0
        for link in list(self._links):
            for tag, channel in list(link.consumers.items()):
                link.to_server.write(_cancel_frame(channel, tag))
                if tell_clients:
                    link.to_client.write(_cancel_frame(channel, tag))
                del link.consumers[tag]
                dropped += 1
            with contextlib.suppress(ConnectionError):
                await link.to_server.drain()
                await link.to_client.drain()
        return dropped

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _drop_all(self, down_s: float) -> None:
        self._down_until = time.monotonic() + down_s
        self.cuts += 1
        for link in self._links:
            link.to_server.close()
            link.to_client.close()
        self._links.clear()

    def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            client_out.close()  # the broker is down: connection refused, as near as TCP allows
            return
        task = asyncio.get_running_loop().create_task(self._relay(client_in, client_out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.close()
            return
        link = _Link(to_server=server_out, to_client=client_out)
        self._links.append(link)
        pumps = [
            asyncio.create_task(self._from_client(client_in, link)),
            asyncio.create_task(self._from_server(server_in, link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_out, server_out):
                writer.close()
            if link in self._links:
                self._links.remove(link)

    async def _from_client(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            link.to_server.write(await reader.readexactly(8))  # the protocol header
            frames = _Frames()
            while data := await reader.read(65536):
                for frame in frames.feed(data):
                    cut = self._cut_at(frame)
                    if cut is not None:
                        if cut.after:
                            link.to_server.write(frame)
                            await link.to_server.drain()
                            await asyncio.sleep(0.05)  # the broker acts on it; its reply is lost
                        self._drop_all(self._down_s)
                        return
                    link.to_server.write(frame)
                await link.to_server.drain()

    async def _from_server(self, reader: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(ConnectionError):
            frames = _Frames()
            while data := await reader.read(65536):
                for frame in frames.feed(data):
                    if _method_of(frame) == _CONSUME_OK:
                        tag = frame[12 : 12 + frame[11]]
                        link.consumers[tag] = _channel_of(frame)
                    link.to_client.write(frame)
                await link.to_client.drain()

    def _cut_at(self, frame: bytes) -> "_Cut | None":
        cut = self._cut
        if cut is None or _method_of(frame) != cut.method:
            return None
        self._seen += 1
        if self._seen != cut.nth:
            return None
        self._cut = None
        return cut


@contextlib.asynccontextmanager
async def amqp_proxy(target_port: int) -> AsyncIterator[AmqpProxy]:
    proxy = AmqpProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
