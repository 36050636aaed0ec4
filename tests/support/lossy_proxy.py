"""A TCP proxy that can lose a reply: the request reaches the server, its answer never returns.

That is what a client sees when Redis dies (or the network drops) after it
ran a command but before the reply got back. The client's retry then re-sends
a command that already took effect.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator


class LossyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._drop_next_reply = False
        self._links: set[asyncio.Task[None]] = set()
        self.replies_dropped = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def drop_next_reply(self) -> None:
        """The next bytes the server sends back are thrown away and the client's link cut."""
        self._drop_next_reply = True

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        for link in self._links:
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        # Each link runs in a task of ours, so `close` can cancel it cleanly.
        link = asyncio.get_running_loop().create_task(self._relay(client_in, client_out))
        self._links.add(link)
        link.add_done_callback(self._links.discard)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection(*self._target)
        upstream = asyncio.create_task(self._pipe(client_in, server_out))
        try:
            while data := await server_in.read(65536):
                if self._drop_next_reply:
                    self._drop_next_reply = False
                    self.replies_dropped += 1
                    break  # the command ran; its reply is lost with the connection
                client_out.write(data)
                await client_out.drain()
        finally:
            upstream.cancel()
            for writer in (client_out, server_out):
                writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()


@contextlib.asynccontextmanager
async def lossy_proxy(target_host: str, target_port: int) -> AsyncIterator[LossyProxy]:
    proxy = LossyProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
