"""The Pillow process pool with real processes: errors crossing the boundary, progress,
clean-up after a cancelled render, and processes that die while idle or busy."""

import asyncio
import io
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from offload_contracts import ImageProcessInput
from offload_image.adapters.pool import PipelinePool
from offload_image.pipeline import Operation
from offload_runtime.errors import PermanentError, TransientError
from tests.support.waiting import sync_probe, wait_until


def ops(*operations: dict[str, object]) -> list[Operation]:
    job = ImageProcessInput.model_validate(
        {"source": {"file_id": "f"}, "operations": list(operations)}
    )
    return list(job.operations)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[PipelinePool]:
    running = PipelinePool(size=2, scratch_dir=tmp_path / "scratch", max_pixels=50_000_000)
    await running.start()
    yield running
    await running.close()


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4000×3000 with grain: a second or so of work to re-encode as a full-size webp."""
    size = (4000, 3000)
    noise = Image.effect_noise(size, 60)
    image = Image.merge("RGB", (noise, Image.linear_gradient("L").resize(size), noise))
    path = tmp_path_factory.mktemp("pool") / "big.jpg"
    image.save(path, "JPEG", quality=90)
    return path


def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def scratch_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()]


async def test_outputs_and_progress_come_back_and_the_files_go_after_the_block(
    pool: PipelinePool, tmp_path: Path
) -> None:
    reports: list[tuple[float, str]] = []
    source = small_png(tmp_path)
    async with pool.render(
        source,
        ops({"op": "resize", "width": 32}, {"op": "convert", "format": "webp"}),
        lambda percent, message: reports.append((percent, message)),
    ) as rendered:
        [main] = rendered
        assert main.path.is_file() and (main.width, main.height) == (32, 24)
        with Image.open(io.BytesIO(main.path.read_bytes())) as image:
            assert image.format == "WEBP"
        # Progress travels on its own queue and may trail the result a little;
        # reports that come after the block are dropped (the job is done).
        await wait_until(
            sync_probe(lambda: reports),
            lambda reports: len(reports) >= 3,
            timeout=10,
            what="three progress reports",
            interval=0.01,
        )
    assert reports == [
        (pytest.approx(100 / 3), "decoded png 64×48"),
        (pytest.approx(200 / 3), "resize → 32×24"),
        (100, "encoded webp"),
    ]
    assert scratch_files(tmp_path) == []


async def test_a_permanent_error_crosses_the_process_boundary_intact(
    pool: PipelinePool, tmp_path: Path
) -> None:
    source = small_png(tmp_path)
    with pytest.raises(PermanentError) as raised:
        async with pool.render(
            source,
            ops({"op": "crop", "left": 0, "top": 0, "right": 100, "bottom": 10}),
            lambda percent, message: None,
        ):
            pass
    assert raised.value.message == "crop box (0, 0, 100, 10) lies outside the 64×48 image"
    assert scratch_files(tmp_path) == []


async def test_a_cancelled_render_leaves_nothing_behind_once_its_process_finishes(
    pool: PipelinePool, tmp_path: Path, big_jpeg: Path
) -> None:
    started = asyncio.Event()

    async def render() -> None:
        async with pool.render(
            big_jpeg,
            ops({"op": "convert", "format": "webp"}),
            lambda percent, message: started.set(),
        ):
            raise AssertionError("the render should have been cancelled")

    task = asyncio.create_task(render())
    await asyncio.wait_for(started.wait(), 30)  # decoded: the process is busy with it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its output directory goes once the process has finished with it.
    image_dir = tmp_path / "scratch" / "image"
    await wait_until(
        sync_probe(lambda: list(image_dir.iterdir())),
        lambda left: not left,
        timeout=60,
        what="the output directory emptied",
    )
    assert list(image_dir.iterdir()) == []
    # The pool is unharmed.
    async with pool.render(small_png(tmp_path), ops(), lambda p, m: None) as rendered:
        assert rendered[0].format == "png"


async def test_a_process_that_died_while_idle_costs_the_next_job_nothing(
    pool: PipelinePool, tmp_path: Path
) -> None:
    for pid in pool.pids():
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)  # let the executor notice
    async with pool.render(small_png(tmp_path), ops(), lambda p, m: None) as rendered:
        assert rendered[0].width == 64
    assert pool.rebuilds == 1


async def test_a_process_killed_mid_render_is_a_transient_error_and_the_pool_is_rebuilt(
    pool: PipelinePool, tmp_path: Path, big_jpeg: Path
) -> None:
    started = asyncio.Event()
    old = set(pool.pids())

    async def render() -> None:
        async with pool.render(
            big_jpeg, ops({"op": "convert", "format": "webp"}), lambda p, m: started.set()
        ):
            pass

    task = asyncio.create_task(render())
    await asyncio.wait_for(started.wait(), 30)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(TransientError, match="pool process died"):
        await task
    assert pool.rebuilds == 1
    async with pool.render(small_png(tmp_path), ops(), lambda p, m: None) as rendered:
        assert rendered[0].height == 48
    assert old.isdisjoint(pool.pids())
