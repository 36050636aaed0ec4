"""The `image.process` job: fetch the source, render it off the loop, store the outputs.

Domain code: it speaks to the outside only through the ports in `ports.py`.
"""

import asyncio

from offload_contracts import ImageProcessInput, ImageProcessResult
from offload_contracts.jobs import ImageOutput
from offload_image.ports import Outputs, Progress, Renderer, Sources

# Share of the progress bar each phase takes; rendering is nearly all of the work.
_FETCHED = 5.0
_RENDER_SHARE = 90.0


class ImageProcessor:
    """Runs one `image.process` job given its ports."""

    def __init__(self, *, sources: Sources, renderer: Renderer, outputs: Outputs) -> None:
        self._sources = sources
        self._renderer = renderer
        self._outputs = outputs

    async def process(
        self, job: ImageProcessInput, *, tenant: str, progress: Progress
    ) -> ImageProcessResult:
        """Process `job` for `tenant`; the result names the stored main output and thumbnails."""
        relay = _ProgressRelay(progress)
        try:
            await progress(0, "fetching the source")
            async with self._sources.open(job.source, tenant) as source:
                relay.report(_FETCHED, "source ready")
                async with self._renderer.render(
                    source,
                    job.operations,
                    lambda percent, message: relay.report(
                        _FETCHED + _RENDER_SHARE * percent / 100, message
                    ),
                ) as rendered:
                    stored = [await self._outputs.adopt(tenant, image) for image in rendered]
            await relay.flush()
        finally:
            relay.cancel()
        main_index = next(i for i, image in enumerate(rendered) if image.role == "main")
        main, main_file = rendered[main_index], stored[main_index]
        return ImageProcessResult(
            file=main_file,
            width=main.width,
            height=main.height,
            format=main.format,
            files=[
                ImageOutput(file=file, width=image.width, height=image.height, format=image.format)
                for image, file in zip(rendered, stored, strict=True)
                if image.role == "thumbnail"
            ],
        )


class _ProgressRelay:
    """Turns the pool's synchronous progress callbacks into `ctx.progress` calls, in order."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._pending: list[asyncio.Future[None]] = []

    def report(self, percent: float, message: str) -> None:
        self._pending = [task for task in self._pending if not task.done()]
        self._pending.append(asyncio.ensure_future(self._progress(percent, message)))

    async def flush(self) -> None:
        """Let reports already made land before the job's outcome is recorded."""
        if self._pending:
            # Progress is best effort: a lost report must not fail finished work.
            await asyncio.gather(*self._pending, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._pending:
            task.cancel()
