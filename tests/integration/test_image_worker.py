"""The image worker against the real RabbitMQ and Redis: results, bad input, dead pool processes,
and the event loop staying live while large photos are processed (issue 4).

Each test runs the real `image` service (its real queue names) in this run's
vhost, with its own Redis prefix and storage directory: in this process, or,
for the event-loop measurement, in its own process as production runs it.
"""

import asyncio
import dataclasses
import io
import os
import signal
import struct
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from offload_contracts import EventKind, ImageProcessRequest, JobStatus
from offload_image.adapters.pool import PipelinePool
from offload_image.app import ImageDeps, build_app
from offload_image.settings import ImageSettings
from offload_runtime.storage import FileStore, StoredFile
from offload_runtime.store import JobRecord, new_id
from offload_runtime.worker import Worker
from tests.support.infra import Infra
from tests.support.processes import ServiceProcess
from tests.support.rig import JobRig
from tests.support.scrape import metric_samples
from tests.support.serving import free_port
from tests.support.waiting import wait_until

TENANT = "acme"


class ImageRig(JobRig):
    """The image worker on the real broker, plus what a test needs to submit and inspect jobs."""

    wait_timeout = 30

    def __init__(self, infra: Infra, storage: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": f"{infra.redis_prefix}image-{uuid.uuid4().hex[:8]}:",
            "retry_tiers": "50ms,100ms",
            "storage_dir": storage,
            "image_pool_size": 2,
            "shutdown_grace_s": 1,
            "log_level": "warning",
            "webhook_allow_private": True,
        }
        values.update(overrides)
        self.settings = ImageSettings(**values)
        super().__init__(
            rabbitmq_url=infra.rabbitmq_url,
            redis_url=infra.redis_url,
            redis_prefix=self.settings.redis_prefix,
            name=f"image-test-{uuid.uuid4().hex[:6]}",
            events_maxlen=200,
        )
        self.files = FileStore(storage, self.redis, self.keys)
        self.pool = PipelinePool(
            size=self.settings.image_pool_size,
            scratch_dir=self.files.scratch_dir,
            max_pixels=self.settings.image_max_pixels,
        )
        self.worker: Worker | None = None
        self.process: ServiceProcess | None = None

    async def start(self, deps: ImageDeps | None = None) -> Worker:
        deps = deps or ImageDeps()
        deps = dataclasses.replace(deps, pool=deps.pool or self.pool)
        self.worker = build_app(self.settings, deps)
        await self.worker.app.start()
        await self.open()
        return self.worker

    async def start_process(self, **overrides: Any) -> ServiceProcess:
        """The worker as production runs it, `python -m offload_image`, on this rig's settings."""
        names = (
            "rabbitmq_url",
            "redis_url",
            "redis_prefix",
            "retry_tiers",
            "storage_dir",
            "image_pool_size",
            "shutdown_grace_s",
            "webhook_allow_private",
        )
        settings = {name: getattr(self.settings, name) for name in names} | overrides
        self.process = ServiceProcess("offload_image", settings={"log_level": "info", **settings})
        process = self.process.start()

        async def logs() -> str:
            return process.logs()

        await wait_until(
            logs,
            lambda logs: "worker starting" in logs,
            timeout=60,
            what="the image worker to start",
            describe=lambda logs: logs[-2000:],
        )
        await self.open()
        return process

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.app.stop()
        if self.process is not None:
            self.process.stop()
        await super().close()

    # ------------------------------------------------------------------ submitting

    async def upload(self, data: bytes, content_type: str = "image/jpeg") -> StoredFile:
        return await self.files.save_bytes(TENANT, data, content_type)

    async def submit(
        self,
        *operations: dict[str, Any],
        max_attempts: int = 3,
        tenant: str = TENANT,
        **source: Any,
    ) -> ImageProcessRequest:
        request = ImageProcessRequest.model_validate(
            {
                "id": new_id(),
                "tenant": tenant,
                "max_attempts": max_attempts,
                "created_at": datetime.now(UTC),
                "input": {"source": source, "operations": list(operations)},
            }
        )
        return await self.submit_request(request, routing_key=request.type)

    # ------------------------------------------------------------------ observing

    async def output(self, file_id: str) -> tuple[Image.Image, StoredFile]:
        """Open a stored output as a user downloading it would."""
        stored = await self.files.get(TENANT, file_id)
        assert stored is not None, f"output {file_id} is not stored for {TENANT}"
        image = Image.open(stored.path)
        image.load()
        return image, stored

    def scratch_files(self) -> list[Path]:
        scratch = self.files.scratch_dir
        return [p for p in scratch.rglob("*") if p.is_file()] if scratch.exists() else []


@pytest.fixture
async def rig(infra: Infra, tmp_path: Path) -> AsyncIterator[ImageRig]:
    rig = ImageRig(infra, tmp_path / "storage")
    yield rig
    await rig.close()


# ---------------------------------------------------------------------- images


def jpeg_bytes(width: int, height: int, *, orientation: int | None = None) -> bytes:
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)
    )
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def large_photo() -> bytes:
    """A 6000×4000 JPEG, made once per session (gradients and noise: quick to generate)."""
    size = (6000, 4000)
    gradient = Image.linear_gradient("L").resize(size)
    noise = Image.effect_noise((1500, 1000), 40).resize(size)
    image = Image.merge(
        "RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def statuses(records: Iterable[JobRecord]) -> list[str]:
    return [record.status for record in records]


# ---------------------------------------------------------------------- results


async def test_a_photo_becomes_a_320x240_webp_and_thumbnails(rig: ImageRig) -> None:
    await rig.start()
    # Stored sideways (EXIF orientation 6), as phones do: 800×600 on disk, 600×800 upright.
    photo = await rig.upload(jpeg_bytes(800, 600, orientation=6))

    job = await rig.submit(
        {"op": "auto_orient"},
        {"op": "thumbnails", "sizes": [{"width": 200, "height": 200}, {"width": 64, "height": 64}]},
        {"op": "fit", "width": 320, "height": 240, "mode": "cover"},
        {"op": "convert", "format": "webp"},
        {"op": "strip_metadata"},
        file_id=photo.id,
    )
    record = await rig.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED, record.error
    result = record.result
    assert result is not None
    assert (result["width"], result["height"], result["format"]) == (320, 240, "webp")
    main, stored = await rig.output(result["file"]["id"])
    assert (main.format, main.size) == ("WEBP", (320, 240))
    assert stored.bytes == result["file"]["bytes"] and stored.content_type == "image/webp"
    assert len(main.getexif()) == 0
    thumbs = [await rig.output(entry["file"]["id"]) for entry in result["files"]]
    # Thumbnails of the upright image (auto-oriented first), in the webp output format.
    assert [(image.format, image.size) for image, _ in thumbs] == [
        ("WEBP", (150, 200)),
        ("WEBP", (48, 64)),
    ]
    assert [(e["width"], e["height"]) for e in result["files"]] == [(150, 200), (48, 64)]
    # Progress was reported while it ran, and nothing is left in the scratch directory.
    events = await rig.events(job.id)
    progress = [e.progress.percent for e in events if e.event == EventKind.PROGRESS]
    assert progress and progress == sorted(progress)
    assert rig.scratch_files() == []


async def test_a_source_of_another_tenant_is_not_found(rig: ImageRig) -> None:
    await rig.start()
    theirs = await rig.files.save_bytes("other-tenant", jpeg_bytes(40, 30), "image/jpeg")
    job = await rig.submit({"op": "resize", "width": 10}, file_id=theirs.id)
    record = await rig.wait_status(job.id)
    assert record.status == JobStatus.FAILED
    assert record.error is not None and record.error.message == f"source file {theirs.id} not found"


# ---------------------------------------------------------------------- bad input


async def test_bad_input_fails_at_once_with_a_clear_message_and_the_worker_carries_on(
    rig: ImageRig,
) -> None:
    rig.settings = rig.settings.model_copy(update={"image_max_pixels": 10_000_000})
    rig.pool = PipelinePool(size=2, scratch_dir=rig.files.scratch_dir, max_pixels=10_000_000)
    await rig.start()
    pids = sorted(rig.pool.pids())
    truncated = jpeg_bytes(400, 300)
    ppm = io.BytesIO()
    Image.new("RGB", (20, 20)).save(ppm, "PPM")
    cases: dict[str, tuple[bytes, list[dict[str, Any]]]] = {
        "the source is not an image Offload can read": (b"%PDF-1.4 not a picture", []),
        "the source image is truncated or corrupt": (truncated[: len(truncated) // 2], []),
        "the limit of 10,000,000 (decompression bomb protection)": (
            bomb_png(5000, 5000),
            [],
        ),
        "unsupported source format PPM": (ppm.getvalue(), []),
        "crop box (0, 0, 500, 10) lies outside the 400×300 image": (
            truncated,
            [{"op": "crop", "left": 0, "top": 0, "right": 500, "bottom": 10}],
        ),
    }
    jobs = {}
    for expected, (data, operations) in cases.items():
        stored = await rig.upload(data, "application/octet-stream")
        jobs[expected] = await rig.submit(*operations, file_id=stored.id)
    missing = await rig.submit(file_id="doesnotexist")

    for expected, job in jobs.items():
        record = await rig.wait_status(job.id)
        assert record.status == JobStatus.FAILED, (expected, record)
        assert record.attempt == 1  # no retry
        assert record.error is not None and record.error.type == "permanent"
        assert not record.error.retryable
        assert expected in record.error.message, record.error.message
    record = await rig.wait_status(missing.id)
    assert record.error is not None and record.error.message == "source file doesnotexist not found"

    # The worker and its pool are unharmed: same processes, and the next job completes.
    good = await rig.upload(jpeg_bytes(400, 300))
    job = await rig.submit({"op": "resize", "width": 100}, file_id=good.id)
    record = await rig.wait_status(job.id)
    assert record.status == JobStatus.COMPLETED and record.result is not None
    assert (record.result["width"], record.result["height"]) == (100, 75)
    assert sorted(rig.pool.pids()) == pids and rig.pool.rebuilds == 0
    assert rig.scratch_files() == []


# ---------------------------------------------------------------------- dead pool processes


async def test_a_killed_pool_process_is_replaced_and_the_job_retried(
    rig: ImageRig, large_photo: bytes
) -> None:
    await rig.start()
    photo = await rig.upload(large_photo)
    first_pids = rig.pool.pids()
    idle_cpu = {pid: cpu_ticks(pid) for pid in first_pids}
    # Heavy enough (a 24-megapixel decode, then a 6-megapixel webp) to be killed mid-way.
    job = await rig.submit(
        {"op": "resize", "width": 3000},
        {"op": "convert", "format": "webp"},
        file_id=photo.id,
    )

    # Kill once a pool process has spent 30 ms of CPU on it (progress events are
    # throttled, so they cannot tell when the work starts).
    async def in_the_pool() -> bool:
        if any(cpu_ticks(pid) - idle_cpu[pid] >= 3 for pid in first_pids):
            return True
        assert (await rig.store.get(job.id)).status != JobStatus.COMPLETED  # type: ignore[union-attr]
        return False

    await wait_until(in_the_pool, timeout=30, what="the job reaching the pool", interval=0.005)
    for pid in first_pids:
        os.kill(pid, signal.SIGKILL)

    record = await rig.wait_status(job.id, timeout=60)

    assert record.status == JobStatus.COMPLETED, record.error
    assert record.attempt == 2
    retrying = [e for e in await rig.events(job.id) if e.event == EventKind.RETRYING]
    assert len(retrying) == 1 and retrying[0].error is not None
    assert retrying[0].error.type == "transient"
    assert "pool process died" in retrying[0].error.message
    assert rig.pool.rebuilds == 1
    assert set(rig.pool.pids()).isdisjoint(first_pids)
    image, _ = await rig.output(record.result["file"]["id"])  # type: ignore[index]
    assert (image.format, image.size) == ("WEBP", (3000, 2000))
    # And the worker keeps working.
    small = await rig.upload(jpeg_bytes(200, 100))
    after = await rig.submit({"op": "resize", "width": 50}, file_id=small.id)
    assert (await rig.wait_status(after.id)).status == JobStatus.COMPLETED


# ---------------------------------------------------------------------- event loop

CONTROL_TICKER = """
import asyncio, sys, time

async def main():
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), done.set)
    print("ready", flush=True)
    worst = 0.0
    while not done.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        worst = max(worst, time.perf_counter() - before - 0.005)
    print(worst, flush=True)

asyncio.run(main())
"""


class ControlTicker:
    """An idle event loop in its own process, ticking alongside the worker.

    Its lag is what the machine alone imposes on any process (other work on a
    shared machine, the scheduler); the worker's lag beyond it is the worker's.
    """

    async def __aenter__(self) -> "ControlTicker":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONTROL_TICKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        assert await self.process.stdout.readline() == b"ready\n"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def worst_lag(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        worst = float((await self.process.stdout.readline()).decode())
        await self.process.wait()
        return worst


async def test_event_loop_lag_stays_under_50ms_while_8_large_photos_are_processed(
    rig: ImageRig, large_photo: bytes
) -> None:
    # The worker in its own process, on its own (uv)loop, as production runs it: its
    # lag is its own, not that of a test process running hundreds of tests. The
    # runtime's sampler in it (a callback due every 5 ms) serves the worst lag since
    # the previous scrape on its /metrics.
    metrics_port = free_port()
    worker = await rig.start_process(metrics_port=metrics_port)
    scrape_url = f"http://127.0.0.1:{metrics_port}/metrics"
    photo = await rig.upload(large_photo)
    # One job first, outside the measurement: a new process pays one-time costs on its
    # first job (the first use of each code path); in production a worker runs job
    # after job. The bound below is unchanged.
    warm = await rig.submit({"op": "resize", "width": 64}, file_id=photo.id)
    assert statuses([await rig.wait_status(warm.id, timeout=90)]) == [JobStatus.COMPLETED]
    amqp_port = urlsplit(rig.settings.rabbitmq_url).port or 5672
    amqp = worker.connections_to(amqp_port)
    assert amqp, "the worker holds no connection to RabbitMQ"

    async with httpx.AsyncClient(timeout=10) as http, ControlTicker() as control:
        await http.get(scrape_url)  # a scrape: the window of the worst lag starts here
        began = time.perf_counter()
        jobs = [
            await rig.submit(
                {"op": "auto_orient"},
                {"op": "resize", "width": 3000},
                {"op": "thumbnails", "sizes": [{"width": 320, "height": 240}]},
                {"op": "convert", "format": "webp"},
                file_id=photo.id,
            )
            for _ in range(8)
        ]
        records = [await rig.wait_status(job.id, timeout=90) for job in jobs]
        elapsed = time.perf_counter() - began
        after = metric_samples((await http.get(scrape_url)).text)  # ... and ends here
        machine = await control.worst_lag()

    assert statuses(records) == [JobStatus.COMPLETED] * 8, [r.error for r in records]
    assert all(
        r.result and (r.result["width"], r.result["height"]) == (3000, 2000) for r in records
    )
    worst = after[("offload_event_loop_lag_max_seconds", frozenset())]
    print(
        f"\n8 jobs of 6000×4000 in {elapsed:.2f}s; the worker's event-loop lag: "
        f"max {worst * 1000:.1f} ms; an idle loop in another process: max {machine * 1000:.1f} ms"
    )
    # Under 50 ms of lag of the worker's own making: on a machine shared with
    # other work, an idle process's worst oversleep is the scheduler's, not ours.
    assert worst < 0.050 + machine, f"event loop lagged {worst * 1000:.1f} ms"
    # Its AMQP connection stayed up throughout: the same socket, never reopened.
    assert worker.connections_to(amqp_port) == amqp
