"""What the image job needs from the outside world, as Protocols (fakes in unit tests)."""

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from offload_contracts import FileRef
from offload_contracts.jobs import ImageSource
from offload_image.pipeline import Operation, RenderedImage, Report

Progress = Callable[[float, str], Awaitable[None]]
"""`JobContext.progress`: percent and message, throttled by the runtime."""


class Sources(Protocol):
    def open(self, source: ImageSource, tenant: str) -> AbstractAsyncContextManager[Path]:
        """The source's bytes as a local file, for the duration of the block."""
        ...


class Renderer(Protocol):
    def render(
        self, source: Path, operations: Sequence[Operation], report: Report
    ) -> AbstractAsyncContextManager[list[RenderedImage]]:
        """Run the pipeline; the outputs exist on disk for the duration of the block."""
        ...


class Outputs(Protocol):
    async def adopt(self, tenant: str, image: RenderedImage) -> FileRef:
        """Store a rendered image as the tenant's file."""
        ...
