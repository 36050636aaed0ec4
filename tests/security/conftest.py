"""Fixtures of the security tests, and the summary table they print at the end of the run."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from offload_image.app import ImageDeps
from offload_image.app import build_app as build_image
from offload_image.settings import ImageSettings
from tests.security import report
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.infra import Infra


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if report.RESULTS:
        terminalreporter.section("security outcomes")
        terminalreporter.write_line(report.table())


@pytest.fixture(scope="module")
async def guarded(infra: Infra) -> AsyncIterator[RunningGateway]:
    """A gateway and an image worker with production defaults: private targets refused."""
    async with AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(
            running_gateway(infra, webhook_allow_private=False)
        )
        worker = build_image(
            ImageSettings(
                rabbitmq_url=infra.rabbitmq_url,
                redis_url=infra.redis_url,
                redis_prefix=gateway.settings.redis_prefix,
                storage_dir=gateway.settings.storage_dir,
                retry_tiers=gateway.settings.retry_tiers,
                webhook_allow_private=False,
                image_pool_size=1,
                shutdown_grace_s=1,
                log_level="warning",
            ),
            ImageDeps(),
        )
        await worker.app.start()
        stack.push_async_callback(worker.app.stop)
        yield gateway


class ConnectionCounter:
    """A TCP listener that counts connections and answers nothing: proof nobody called it."""

    def __init__(self) -> None:
        self.connections = 0
        self.servers: list[asyncio.Server] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def listen(self, host: str) -> int:
        """Listen on `host` (on the same port as the first listener, when there is one)."""
        port = self.servers[0].sockets[0].getsockname()[1] if self.servers else 0
        server = await asyncio.start_server(self._accept, host, port)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def counter() -> AsyncIterator[ConnectionCounter]:
    """Listening on 127.0.0.1 and [::1] on one port."""
    listener = ConnectionCounter()
    await listener.listen("127.0.0.1")
    await listener.listen("::1")
    yield listener
    await listener.close()
