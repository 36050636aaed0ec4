"""The image job's domain wiring with fake ports: result assembly, progress, clean-up, settings."""

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from offload_contracts import FileRef, ImageProcessInput
from offload_contracts.jobs import ImageSource
from offload_image.pipeline import Operation, RenderedImage, Report
from offload_image.processing import ImageProcessor
from offload_image.settings import ImageSettings
from offload_runtime.errors import PermanentError


def rendered(role: str, name: str, width: int, height: int) -> RenderedImage:
    return RenderedImage(
        role=role,  # type: ignore[arg-type]
        path=Path(f"/scratch/{name}"),
        width=width,
        height=height,
        format="webp",
        content_type="image/webp",
        bytes=100,
        sha256="0" * 64,
    )


class FakeSources:
    def __init__(self) -> None:
        self.opened: list[tuple[ImageSource, str]] = []
        self.closed = 0

    @contextlib.asynccontextmanager
    async def open(self, source: ImageSource, tenant: str) -> AsyncIterator[Path]:
        self.opened.append((source, tenant))
        try:
            yield Path("/sources/photo.jpg")
        finally:
            self.closed += 1


class FakeRenderer:
    def __init__(self, outputs: list[RenderedImage], fail: Exception | None = None) -> None:
        self.outputs = outputs
        self.fail = fail
        self.released = 0

    @contextlib.asynccontextmanager
    async def render(
        self, source: Path, operations: Sequence[Operation], report: Report
    ) -> AsyncIterator[list[RenderedImage]]:
        report(50, "halfway")
        report(100, "done")
        if self.fail:
            raise self.fail
        try:
            yield self.outputs
        finally:
            self.released += 1


class FakeOutputs:
    def __init__(self) -> None:
        self.adopted: list[tuple[str, Path]] = []

    async def adopt(self, tenant: str, image: RenderedImage) -> FileRef:
        self.adopted.append((tenant, image.path))
        file_id = image.path.stem
        return FileRef(
            id=file_id,
            url=f"/v1/files/{file_id}",
            bytes=image.bytes,
            sha256=image.sha256,
            content_type=image.content_type,
        )


JOB = ImageProcessInput.model_validate(
    {
        "source": {"file_id": "photo"},
        "operations": [
            {"op": "thumbnails", "sizes": [{"width": 64, "height": 64}]},
            {"op": "fit", "width": 320, "height": 240},
            {"op": "convert", "format": "webp"},
        ],
    }
)


async def test_the_result_names_the_main_output_and_the_thumbnails_in_order() -> None:
    sources, outputs = FakeSources(), FakeOutputs()
    renderer = FakeRenderer(
        [
            rendered("main", "main", 320, 240),
            rendered("thumbnail", "t1", 64, 48),
            rendered("thumbnail", "t2", 32, 24),
        ]
    )
    progress: list[tuple[float, str]] = []

    async def record(percent: float, message: str) -> None:
        progress.append((percent, message))

    processor = ImageProcessor(sources=sources, renderer=renderer, outputs=outputs)
    result = await processor.process(JOB, tenant="acme", progress=record)

    assert (result.file.id, result.width, result.height, result.format) == (
        "main",
        320,
        240,
        "webp",
    )
    assert [(f.file.id, f.width, f.height) for f in result.files] == [
        ("t1", 64, 48),
        ("t2", 32, 24),
    ]
    assert [tenant for tenant, _ in outputs.adopted] == ["acme"] * 3
    assert sources.opened == [(JOB.source, "acme")] and sources.closed == 1
    assert renderer.released == 1
    # Fetch, source ready, then the pipeline's own percentages mapped into 5–95.
    assert [percent for percent, _ in progress] == [0, 5, 50, 95]


async def test_a_render_failure_propagates_and_the_source_is_released() -> None:
    sources = FakeSources()
    renderer = FakeRenderer([], fail=PermanentError("the source image is truncated or corrupt"))
    processor = ImageProcessor(sources=sources, renderer=renderer, outputs=FakeOutputs())

    async def ignore(percent: float, message: str) -> None:
        return None

    with pytest.raises(PermanentError, match="truncated"):
        await processor.process(JOB, tenant="acme", progress=ignore)
    assert sources.closed == 1


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OFFLOAD_IMAGE_POOL_SIZE", "OFFLOAD_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_concurrency_defaults_to_twice_the_pool_size() -> None:
    assert ImageSettings(image_pool_size=3).concurrency == 6
    assert ImageSettings(image_pool_size=3, concurrency=4).concurrency == 4


@pytest.mark.usefixtures("clean_env")
def test_the_pool_defaults_to_the_number_of_cores() -> None:
    assert ImageSettings().image_pool_size == (os.cpu_count() or 1)
