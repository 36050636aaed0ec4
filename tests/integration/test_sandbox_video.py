"""The sandbox video provider over real HTTP: renders, content, ranges, failure injection."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.waiting import wait_until

RATE = 100_000  # bytes per second of 1080p video: 10 s of it = 1 MB


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        sandbox_video_render_s=0.2,
        sandbox_video_bytes_per_second=RATE,
        sandbox_video_retry_after_s=2,
    ) as running:
        yield running


@pytest.fixture
async def client(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as http:
        yield http


async def submit(client: httpx.AsyncClient, key: str | None = None, **spec: Any) -> httpx.Response:
    body = {"prompt": "a cat surfing", "duration_s": 10, "resolution": "1080p", **spec}
    return await client.post(
        "/v1/videos", json=body, headers={"Idempotency-Key": key} if key else {}
    )


async def finished(client: httpx.AsyncClient, video_id: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(f"/v1/videos/{video_id}")).json()
        return body

    return await wait_until(
        get,
        lambda body: body["status"] not in ("queued", "processing"),
        timeout=10,
        what=f"video {video_id} finished",
        interval=0.02,
    )


async def stats(client: httpx.AsyncClient, key: str) -> list[dict[str, Any]]:
    renders: list[dict[str, Any]] = (
        await client.get("/v1/sandbox/video/renders", params={"job": key})
    ).json()["renders"]
    return renders


async def test_a_render_goes_queued_processing_succeeded_with_rising_progress(
    client: httpx.AsyncClient,
) -> None:
    created = await submit(client)
    assert created.status_code == 201
    video = created.json()
    assert video["status"] == "queued" and video["progress"] == 0

    seen: list[tuple[str, int]] = []

    async def get() -> dict[str, Any]:
        body: dict[str, Any] = (await client.get(f"/v1/videos/{video['id']}")).json()
        seen.append((body["status"], body["progress"]))
        return body

    body = await wait_until(
        get,
        lambda body: body["status"] == "succeeded",
        timeout=10,
        what=f"video {video['id']} succeeded",
        interval=0.01,
    )

    statuses = [status for status, _ in seen]
    assert "processing" in statuses and statuses[-1] == "succeeded"
    assert statuses.index("processing") < statuses.index("succeeded")
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert body["bytes"] == 10 * RATE and len(body["sha256"]) == 64


async def test_content_is_deterministic_and_matches_its_checksum(
    client: httpx.AsyncClient,
) -> None:
    first = (await submit(client, resolution="720p")).json()["id"]
    other = (await submit(client, resolution="720p")).json()["id"]
    status = await finished(client, first)
    await finished(client, other)

    one = await client.get(f"/v1/videos/{first}/content")
    again = await client.get(f"/v1/videos/{first}/content")
    different = await client.get(f"/v1/videos/{other}/content")

    assert one.status_code == 200 and one.headers["content-type"] == "video/mp4"
    assert len(one.content) == 5 * RATE  # 720p is half the 1080p rate
    assert one.content == again.content
    assert one.content != different.content
    digest = hashlib.sha256(one.content).hexdigest()
    assert digest == status["sha256"] == one.headers["x-content-sha256"]
    assert one.headers["etag"] == f'"{digest}"' and one.headers["accept-ranges"] == "bytes"
    # No two MiB of a file repeat, so a misplaced resume would change the checksum.
    big = (await submit(client, size_bytes=3 * 1024 * 1024)).json()["id"]
    await finished(client, big)
    content = (await client.get(f"/v1/videos/{big}/content")).content
    mib = 1024 * 1024
    assert len({content[i : i + mib] for i in range(0, 3 * mib, mib)}) == 3


async def test_ranges_answer_206_with_the_right_slice(client: httpx.AsyncClient) -> None:
    video_id = (await submit(client)).json()["id"]
    status = await finished(client, video_id)
    whole = (await client.get(f"/v1/videos/{video_id}/content")).content
    size = len(whole)

    tail = await client.get(f"/v1/videos/{video_id}/content", headers={"Range": "bytes=1000-"})
    middle = await client.get(f"/v1/videos/{video_id}/content", headers={"Range": "bytes=10-19"})
    suffix = await client.get(f"/v1/videos/{video_id}/content", headers={"Range": "bytes=-5"})

    assert tail.status_code == 206 and tail.content == whole[1000:]
    assert tail.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
    assert tail.headers["x-content-sha256"] == status["sha256"]  # the whole file's
    assert middle.status_code == 206 and middle.content == whole[10:20]
    assert suffix.status_code == 206 and suffix.content == whole[-5:]

    past = await client.get(f"/v1/videos/{video_id}/content", headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"

    stale = await client.get(
        f"/v1/videos/{video_id}/content",
        headers={"Range": "bytes=1000-", "If-Range": '"not-this-file"'},
    )
    assert stale.status_code == 200 and stale.content == whole  # a changed file comes whole
    [render] = [
        r
        for r in (await client.get("/v1/sandbox/video/renders")).json()["renders"]
        if r["id"] == video_id
    ]
    assert render["ranges"] == [None, "bytes=1000-", "bytes=10-19", "bytes=-5", "bytes=1000-"]


async def test_the_same_idempotency_key_returns_the_same_render(client: httpx.AsyncClient) -> None:
    first = await submit(client, key="job-abc")
    second = await submit(client, key="job-abc")

    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    [render] = await stats(client, "job-abc")
    assert render["submissions"] == 2


async def test_sandbox_reject_is_a_400_problem(client: httpx.AsyncClient) -> None:
    answer = await submit(client, key="rejected", model="sandbox-reject")

    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert "rejects" in answer.json()["detail"]
    assert await stats(client, "rejected") == []  # nothing was created


async def test_unknown_models_and_ids_are_refused(client: httpx.AsyncClient) -> None:
    assert (await submit(client, model="veo-9000")).status_code == 400
    assert (await client.get("/v1/videos/video_nope")).status_code == 404
    assert (await client.get("/v1/videos/video_nope/content")).status_code == 404
    assert (await client.delete("/v1/videos/video_nope")).status_code == 404
    assert (await submit(client, duration_s=0)).status_code == 422


async def test_content_before_the_render_finishes_is_a_409(client: httpx.AsyncClient) -> None:
    video_id = (await submit(client)).json()["id"]
    early = await client.get(f"/v1/videos/{video_id}/content")
    assert early.status_code == 409 and "not succeeded" in early.json()["detail"]


async def test_sandbox_fail_n_answers_503_n_times_then_works(client: httpx.AsyncClient) -> None:
    created = await submit(client, key="flaky", model="sandbox-fail-2")
    assert created.status_code == 201  # the render is accepted...
    video_id = created.json()["id"]

    answers = [await client.get(f"/v1/videos/{video_id}") for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]  # ...then its calls fail twice
    assert answers[0].headers["retry-after"] == "2"
    [render] = await stats(client, "flaky")
    assert render["injected_failures"] == 2 and render["submissions"] == 1


async def test_sandbox_drop_breaks_the_first_download_at_that_fraction(
    client: httpx.AsyncClient,
) -> None:
    video_id = (await submit(client, key="dropper", model="sandbox-drop-50")).json()["id"]
    await finished(client, video_id)
    received = bytearray()

    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("GET", f"/v1/videos/{video_id}/content") as response:
            async for chunk in response.aiter_raw():
                received.extend(chunk)

    assert len(received) == 10 * RATE // 2
    rest = await client.get(
        f"/v1/videos/{video_id}/content", headers={"Range": f"bytes={len(received)}-"}
    )
    whole = (await client.get(f"/v1/videos/{video_id}/content")).content
    assert bytes(received) + rest.content == whole  # later downloads are not cut
    [render] = await stats(client, "dropper")
    assert render["bytes_served"] == len(received) + len(rest.content) + len(whole)


async def test_sandbox_render_fail_ends_failed_with_a_reason(client: httpx.AsyncClient) -> None:
    video_id = (await submit(client, model="sandbox-render-fail")).json()["id"]
    body = await finished(client, video_id)
    assert body["status"] == "failed" and body["error"]["message"]


async def test_delete_cancels_a_running_render(client: httpx.AsyncClient) -> None:
    video_id = (await submit(client, key="to-cancel")).json()["id"]

    cancelled = await client.delete(f"/v1/videos/{video_id}")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    await asyncio.sleep(0.3)  # past the render time: it must not finish anyway
    assert (await client.get(f"/v1/videos/{video_id}")).json()["status"] == "cancelled"
    [render] = await stats(client, "to-cancel")
    assert render["cancelled"] is True


async def test_an_api_key_is_enforced_when_configured() -> None:
    async with (
        running_sandbox(sandbox_video_api_key="s3cret", sandbox_video_render_s=0) as sandbox,
        httpx.AsyncClient(base_url=sandbox.base_url) as client,
    ):
        assert (await submit(client)).status_code == 401
        authorized = await client.post(
            "/v1/videos",
            json={"prompt": "x", "duration_s": 1, "resolution": "480p"},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert authorized.status_code == 201


async def test_a_download_rate_cap_paces_the_body() -> None:
    async with (
        running_sandbox(
            sandbox_video_render_s=0,
            sandbox_video_bytes_per_second=RATE,
            sandbox_video_download_bytes_per_second=1_000_000,
        ) as sandbox,
        httpx.AsyncClient(base_url=sandbox.base_url) as client,
    ):
        video_id = (await submit(client, size_bytes=400_000)).json()["id"]
        await finished(client, video_id)
        began = time.monotonic()
        body = (await client.get(f"/v1/videos/{video_id}/content")).content
        took = time.monotonic() - began
    assert len(body) == 400_000
    assert took >= 0.3  # 400 kB at 1 MB/s, allowing for the first piece going out at once
