"""The whole sandbox app (every stand-in provider) served over real HTTP for a test.

`running_sandbox(**overrides)` runs uvicorn in the test's own event loop on a
free port, so a test reaches the sandbox exactly as a worker would: over a
socket, with real streaming and real disconnects.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from offload_sandbox.app import build_app
from offload_sandbox.settings import SandboxSettings
from tests.support.serving import serve


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
    # Streams still open at the end of a test are cut after a second (serve's grace).
    async with serve(app) as base_url:
        yield RunningSandbox(base_url, app, settings)
