"""video.generate through the gateway over HTTP, with the real video worker and the sandbox.

The issue's "done when": a video job completes and its file downloads from
`GET /v1/files/{id}` with the right bytes and SHA-256; a download broken
halfway resumes (the sandbox's byte count shows it); a flaky provider
completes after retries with one render; cancel stops the provider's render.
"""

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from offload_video.app import build_app as build_video
from offload_video.settings import VideoSettings
from tests.support.gateway import RunningGateway, poll_job, running_gateway, submit_job
from tests.support.infra import Infra
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.waiting import wait_until

RATE = 100_000  # sandbox bytes per second of 1080p video


@pytest.fixture(scope="module")
async def stack(infra: Infra) -> AsyncIterator[tuple[RunningGateway, RunningSandbox]]:
    """The gateway, the sandbox, and a video worker sharing the gateway's Redis and storage."""
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            running_sandbox(
                sandbox_video_render_s=0.2,
                sandbox_video_render_s_per_video_s=0.01,  # a 30 s video renders in 0.5 s
                sandbox_video_bytes_per_second=RATE,
                sandbox_video_retry_after_s=0,
            )
        )
        gateway = await stack.enter_async_context(running_gateway(infra))
        worker = build_video(
            VideoSettings(
                rabbitmq_url=infra.rabbitmq_url,
                redis_url=infra.redis_url,
                redis_prefix=gateway.settings.redis_prefix,
                storage_dir=gateway.settings.storage_dir,
                retry_tiers=gateway.settings.retry_tiers,
                video_base_url=sandbox.base_url,
                video_poll_initial_s=0.02,
                video_poll_max_s=0.1,
                shutdown_grace_s=1,
                log_level="warning",
            )
        )
        await worker.app.start()
        stack.push_async_callback(worker.app.stop)
        yield gateway, sandbox


async def submit(http: httpx.AsyncClient, **spec: Any) -> str:
    video = {"prompt": "A paper boat on a rainy street", "duration_s": 30, "resolution": "1080p"}
    return await submit_job(http, "video.generate", video | spec)


async def renders(sandbox: RunningSandbox, job_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url("/v1/sandbox/video/renders"), params={"job": job_id})
    found: list[dict[str, Any]] = answer.json()["renders"]
    return found


async def provider_bytes(sandbox: RunningSandbox, render_id: str) -> bytes:
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url(f"/v1/videos/{render_id}/content"))
    assert answer.status_code == 200
    return answer.content


async def test_a_video_job_completes_and_its_file_downloads_with_the_right_bytes(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, sandbox = stack
    async with gateway.client("acme") as http:
        job_id = await submit(http)
        job = await poll_job(http, job_id)
        assert job["status"] == "completed", job
        file = job["result"]["file"]
        download = await http.get(file["url"])
        part = await http.get(file["url"], headers={"Range": "bytes=100-199"})
    async with gateway.client("globex") as other:
        foreign = await other.get(file["url"])

    [render] = await renders(sandbox, job_id)
    expected = await provider_bytes(sandbox, render["id"])
    assert len(expected) == 30 * RATE
    assert download.status_code == 200 and download.content == expected
    assert hashlib.sha256(download.content).hexdigest() == file["sha256"]
    assert file["bytes"] == len(expected) and file["content_type"] == "video/mp4"
    assert download.headers["content-type"] == "video/mp4"
    assert part.status_code == 206 and part.content == expected[100:200]
    assert foreign.status_code == 404  # another tenant's file does not exist for them


async def test_a_download_broken_halfway_resumes_and_the_file_is_whole(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, sandbox = stack
    async with gateway.client("acme") as http:
        job_id = await submit(http, model="sandbox-drop-50", duration_s=40)
        job = await poll_job(http, job_id)
        assert job["status"] == "completed", job
        download = await http.get(job["result"]["file"]["url"])

    assert job["attempt"] == 2
    [render] = await renders(sandbox, job_id)
    size = render["bytes"]
    assert size <= render["bytes_served"] < size * 1.1  # a restart would be 1.5 × the file
    assert render["ranges"][0] is None and render["ranges"][1].startswith("bytes=")
    assert hashlib.sha256(download.content).hexdigest() == job["result"]["file"]["sha256"]
    assert download.content == await provider_bytes(sandbox, render["id"])


async def test_a_flaky_provider_completes_after_retries_with_one_render(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, sandbox = stack
    async with gateway.client("acme") as http:
        job_id = await submit(http, model="sandbox-fail-2", duration_s=5)
        job = await poll_job(http, job_id)

    assert job["status"] == "completed", job
    assert job["attempt"] == 3
    [render] = await renders(sandbox, job_id)
    assert render["submissions"] == 1 and render["injected_failures"] == 2


async def test_a_rejected_video_fails_at_once_with_the_providers_reason(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, _ = stack
    async with gateway.client("acme") as http:
        job_id = await submit(http, model="sandbox-reject")
        job = await poll_job(http, job_id)

    assert job["status"] == "failed" and job["attempt"] == 1
    assert job["error"]["retryable"] is False
    assert "rejects" in job["error"]["message"]


async def test_cancel_stops_the_providers_render(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, sandbox = stack
    async with gateway.client("acme") as http:
        job_id = await submit(http, duration_s=600)  # renders for 0.2 + 6 s
        deadline = time.monotonic() + 15  # for the render to start, then to be cancelled
        await wait_until(
            lambda: renders(sandbox, job_id),  # the render is ordered and being polled
            timeout=15,
            what="a render submitted",
            interval=0.02,
        )

        answer = await http.delete(f"/v1/jobs/{job_id}")

        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled"
        await wait_until(
            lambda: renders(sandbox, job_id),
            lambda found: found[0]["cancelled"],
            timeout=deadline - time.monotonic(),
            what="the provider's render cancelled",
            interval=0.02,
        )
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        again = await http.delete(f"/v1/jobs/{job_id}")
    [render] = await renders(sandbox, job_id)

    assert job["status"] == "cancelled" and job["result"] is None
    assert render["status"] == "cancelled" and render["submissions"] == 1
    assert render["bytes_served"] == 0
    assert again.status_code == 409  # already finished
