"""The whole sandbox app (every stand-in provider) served over real HTTP for a test.

`running_sandbox(**overrides)` runs uvicorn in the test's own event loop on a
free port, so a test reaches the sandbox exactly as a worker would: over a
socket, with real streaming and real disconnects.
"""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from offload_sandbox.app import build_app
from offload_sandbox.settings import SandboxSettings


@dataclass(frozen=True)
class RunningSandbox:
    """A sandbox listening on `base_url`; `llm_base_url` is what OFFLOAD_LLM_BASE_URL takes."""

    base_url: str
    app: FastAPI
    settings: SandboxSettings

    @property
    def llm_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@asynccontextmanager
async def running_sandbox(**overrides: Any) -> AsyncIterator[RunningSandbox]:
    """Serve `build_app(SandboxSettings(**overrides))` on 127.0.0.1 and a free port."""
    settings = SandboxSettings(**overrides)
    app = build_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        # Streams still open at the end of a test are cut after this long.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # uvicorn would capture SIGINT/SIGTERM while it serves; the test runner owns them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("the sandbox stopped before it started")
            await asyncio.sleep(0.005)
        yield RunningSandbox(f"http://127.0.0.1:{port}", app, settings)
    finally:
        server.should_exit = True
        await task
        sock.close()
