"""The video worker end to end below the gateway: real RabbitMQ, Redis, sandbox over HTTP."""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offload_contracts import EventKind, JobStatus
from tests.support.infra import Infra
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.video import VideoRig
from tests.support.waiting import sync_probe, wait_until

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
RATE = 100_000  # sandbox bytes per second of 1080p: a 40 s video is 4 MB


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        sandbox_video_render_s=0.3,
        sandbox_video_bytes_per_second=RATE,
        sandbox_video_retry_after_s=0,
    ) as running:
        yield running


@pytest.fixture
async def rig(infra: Infra, sandbox: RunningSandbox, tmp_path: Path) -> AsyncIterator[VideoRig]:
    video = VideoRig(infra, sandbox.base_url, tmp_path / "storage")
    await video.start()
    yield video
    await video.close()


async def stored_bytes(rig: VideoRig, file_id: str) -> bytes:
    stored = await rig.files.get("acme", file_id)
    assert stored is not None
    return await asyncio.to_thread(Path(stored.path).read_bytes)


async def test_a_video_job_completes_with_the_providers_bytes_and_checksum(
    rig: VideoRig,
) -> None:
    job = await rig.submit(duration_s=20)

    record = await rig.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED, record.error
    assert record.attempt == 1
    assert record.result is not None
    file = record.result["file"]
    [render] = await rig.renders(job.id)
    assert render["submissions"] == 1 and render["ranges"] == [None]
    expected = await rig.content(render["id"])
    assert len(expected) == 20 * RATE
    data = await stored_bytes(rig, file["id"])
    assert data == expected
    assert file["bytes"] == len(expected)
    assert file["sha256"] == hashlib.sha256(expected).hexdigest()
    assert file["content_type"] == "video/mp4" and file["url"] == f"/v1/files/{file['id']}"
    assert list(rig.partial_dir.iterdir()) == []  # the partial file became the stored file
    kinds = [e.event for e in await rig.events(job.id)]
    assert kinds[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert kinds[-1] == EventKind.COMPLETED


async def test_progress_events_follow_the_render(infra: Infra, tmp_path: Path) -> None:
    async with running_sandbox(sandbox_video_render_s=2, sandbox_video_bytes_per_second=RATE) as sb:
        rig = VideoRig(infra, sb.base_url, tmp_path, video_poll_max_s=0.2)
        await rig.start()
        try:
            job = await rig.submit(duration_s=5)
            record = await rig.wait_status(job.id, TERMINAL)
            events = await rig.events(job.id)
        finally:
            await rig.close()

    assert record.status == JobStatus.COMPLETED
    progress = [e.progress for e in events if e.event == EventKind.PROGRESS]
    rendering = [p for p in progress if p is not None and p.message.startswith("rendering")]
    assert len(rendering) >= 2  # throttled to two a second over a 2 s render
    percents = [p.percent for p in rendering]
    assert percents == sorted(percents) and 0 < percents[-1] <= 80


async def test_a_download_broken_halfway_resumes_instead_of_restarting(rig: VideoRig) -> None:
    job = await rig.submit(model="sandbox-drop-50", duration_s=40)

    record = await rig.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED, record.error
    assert record.attempt == 2  # the break was a transient failure, retried
    [render] = await rig.renders(job.id)
    size = render["bytes"]
    assert size == 40 * RATE
    first, resume = render["ranges"]
    assert first is None  # attempt 1 asked for the whole file...
    resumed_at = int(resume.removeprefix("bytes=").removesuffix("-"))
    assert size * 0.4 < resumed_at <= size // 2  # ...attempt 2 for the rest only
    # Bytes fetched in all: the file once, plus what was in flight when it broke;
    # a restart would have cost 1.5 times the file.
    assert size <= render["bytes_served"] < size * 1.1
    assert render["submissions"] == 1
    retrying = [e for e in await rig.events(job.id) if e.event == EventKind.RETRYING]
    assert len(retrying) == 1 and retrying[0].error is not None
    assert "download" in retrying[0].error.message
    file = record.result["file"] if record.result else {}
    expected = await rig.content(render["id"])
    assert await stored_bytes(rig, file["id"]) == expected
    assert file["sha256"] == hashlib.sha256(expected).hexdigest()


async def test_a_flaky_provider_completes_after_retries_with_one_render(rig: VideoRig) -> None:
    job = await rig.submit(model="sandbox-fail-2")

    record = await rig.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.COMPLETED, record.error
    assert record.attempt == 3  # two 503s, two retries
    [render] = await rig.renders(job.id)
    assert render["submissions"] == 1  # the retries polled the recorded render
    assert render["injected_failures"] == 2
    retrying = [e for e in await rig.events(job.id) if e.event == EventKind.RETRYING]
    assert [e.error.retryable for e in retrying if e.error] == [True, True]
    assert all("503" in e.error.message for e in retrying if e.error)


async def test_a_rejected_request_fails_at_once_without_retries(rig: VideoRig) -> None:
    job = await rig.submit(model="sandbox-reject")

    record = await rig.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.FAILED
    assert record.attempt == 1
    assert record.error is not None and not record.error.retryable
    assert "400" in record.error.message and "rejects" in record.error.message


async def test_a_render_the_provider_fails_is_a_permanent_failure_with_its_reason(
    rig: VideoRig,
) -> None:
    job = await rig.submit(model="sandbox-render-fail")

    record = await rig.wait_status(job.id, TERMINAL)

    assert record.status == JobStatus.FAILED and record.attempt == 1
    assert record.error is not None and "renderer crashed" in record.error.message
    [render] = await rig.renders(job.id)
    assert render["status"] == "failed"


async def test_cancel_stops_the_providers_render(infra: Infra, tmp_path: Path) -> None:
    # A long render: the job is polling it when the user cancels.
    async with running_sandbox(sandbox_video_render_s=60) as slow:
        rig = VideoRig(infra, slow.base_url, tmp_path)
        await rig.start()
        try:
            job = await rig.submit()
            await wait_until(
                lambda: _has_render(rig, job.id), timeout=15, what="a render", interval=0.02
            )
            active = await rig.wait_status(job.id, {JobStatus.ACTIVE})

            assert (await rig.store.cancel(active)).applied

            await wait_until(
                lambda: _render_cancelled(rig, job.id),
                timeout=15,
                what="the render cancelled",
                interval=0.02,
            )
            [render] = await rig.renders(job.id)
            record = await rig.store.get(job.id)
            kinds = [e.event for e in await rig.events(job.id)]
        finally:
            await rig.close()

    assert render["status"] == "cancelled" and render["submissions"] == 1
    assert record is not None and record.status == JobStatus.CANCELLED
    assert kinds[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert kinds[-1] == EventKind.CANCELLED and EventKind.COMPLETED not in kinds


async def test_cancel_during_the_download_removes_the_partial_file(
    infra: Infra, tmp_path: Path
) -> None:
    async with running_sandbox(
        sandbox_video_render_s=0.05,
        sandbox_video_bytes_per_second=RATE,
        sandbox_video_download_bytes_per_second=2_000_000,  # 8 MB takes 4 s
    ) as sb:
        rig = VideoRig(infra, sb.base_url, tmp_path, video_chunk_bytes=64 * 1024)
        await rig.start()
        try:
            job = await rig.submit(duration_s=80)
            partial = rig.partial_dir / f"{job.id}.part"
            await wait_until(
                sync_probe(lambda: partial.exists() and partial.stat().st_size > 500_000),
                timeout=15,
                what="over 500 kB downloaded",
                interval=0.01,
            )
            active = await rig.wait_status(job.id, {JobStatus.ACTIVE})

            assert (await rig.store.cancel(active)).applied

            await wait_until(
                sync_probe(lambda: not partial.exists()),
                timeout=15,
                what="the partial file removed",
                interval=0.01,
            )
            await wait_until(
                sync_probe(lambda: rig.worker is not None and rig.worker.runner.running_jobs == 0),
                timeout=15,
                what="no job running",
                interval=0.01,
            )
            [render] = await rig.renders(job.id)
            record = await rig.store.get(job.id)
        finally:
            await rig.close()

    assert record is not None and record.status == JobStatus.CANCELLED
    assert render["bytes_served"] < render["bytes"]  # it stopped mid-file
    # The render had finished, so the cancel deleted it at the provider instead.
    assert render["status"] == "succeeded" and render["deleted"] is True
    assert list(rig.partial_dir.iterdir()) == []


async def test_a_job_cancelled_between_attempts_has_its_render_and_partial_file_cleaned_up(
    infra: Infra, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # The download breaks halfway (transient): the job waits `delayed` for its next
    # attempt, with a partial file here and a finished render at the provider.
    rig = VideoRig(infra, sandbox.base_url, tmp_path / "storage", retry_tiers="1s")
    await rig.start()
    try:
        job = await rig.submit(model="sandbox-drop-50", duration_s=40)
        delayed = await rig.wait_status(job.id, {JobStatus.DELAYED})
        partial = rig.partial_dir / f"{job.id}.part"
        assert partial.exists()

        assert (await rig.store.cancel(delayed)).applied

        # No task runs it, so no worker hears the cancel notice; its next delivery
        # (the retry, when the tier comes due) finds it cancelled and cleans up.
        await wait_until(
            sync_probe(lambda: not partial.exists()),
            timeout=15,
            what="the partial file removed",
            interval=0.01,
        )
        await wait_until(
            lambda: _render_deleted(rig, job.id),
            timeout=15,
            what="the render deleted",
            interval=0.02,
        )
        [render] = await rig.renders(job.id)
        record = await rig.store.get(job.id)
        kinds = [e.event for e in await rig.events(job.id)]
    finally:
        await rig.close()

    assert render["submissions"] == 1 and render["deleted"] is True
    assert record is not None and record.status == JobStatus.CANCELLED
    assert kinds.count(EventKind.STARTED) == 1  # the retry did not run it again
    assert kinds[-1] == EventKind.CANCELLED and EventKind.COMPLETED not in kinds


async def test_one_process_runs_several_renders_at_once(rig: VideoRig) -> None:
    jobs = [await rig.submit(duration_s=5) for _ in range(4)]

    records = [await rig.wait_status(job.id, TERMINAL) for job in jobs]

    assert all(r.status == JobStatus.COMPLETED for r in records)
    # Each render takes 0.3 s at the provider; one at a time, the last would
    # start after the first finished. All four were active together.
    latest_start = max(r.started_at for r in records if r.started_at)
    earliest_finish = min(r.finished_at for r in records if r.finished_at)
    assert latest_start < earliest_finish
    shas = {r.result["file"]["sha256"] for r in records if r.result}
    assert len(shas) == 4  # four different renders, four different files


async def _has_render(rig: VideoRig, job_id: str) -> bool:
    renders = await rig.renders(job_id)
    return bool(renders) and renders[0]["status_calls"] > 0


async def _render_cancelled(rig: VideoRig, job_id: str) -> bool:
    renders = await rig.renders(job_id)
    return bool(renders) and renders[0]["cancelled"]


async def _render_deleted(rig: VideoRig, job_id: str) -> bool:
    renders = await rig.renders(job_id)
    return bool(renders) and renders[0]["deleted"]
