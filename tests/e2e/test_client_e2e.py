"""The Python client and the `offload` CLI against the real services.

One stack per module: the gateway, the notifier (SSE) on the gateway's Redis
prefix and keys, the sandbox, and real ai and image workers. The client talks
to them over HTTP exactly as a web app would; the CLI runs as a subprocess, as
a user would run it.
"""

import asyncio
import contextlib
import hashlib
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from offload import (
    AsyncOffload,
    ChecksumMismatch,
    Conflict,
    DeadLetter,
    FileInfo,
    Job,
    JobStatus,
    NotFound,
    Offload,
    ValidationFailed,
    WaitTimeout,
)
from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_image.app import build_app as build_image
from offload_image.settings import ImageSettings
from offload_notifier.app import build_app as build_notifier
from offload_notifier.settings import NotifierSettings
from tests.support.gateway import RunningGateway
from tests.support.infra import Infra
from tests.support.ops import ADMIN_KEY
from tests.support.sandbox import running_sandbox
from tests.support.serving import free_port, serve
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    gateway: RunningGateway
    notifier_url: str

    def key(self, tenant: str = "acme") -> str:
        return self.gateway.api_keys[tenant]

    def client(self, tenant: str = "acme", **overrides: Any) -> AsyncOffload:
        # No notifier URL: the client follows each job's `links.events`.
        options: dict[str, Any] = {"api_key": self.key(tenant)}
        options.update(overrides)
        return AsyncOffload(self.gateway.base_url, **options)

    def cli_env(self, tenant: str = "acme") -> dict[str, str]:
        return {
            **os.environ,
            "OFFLOAD_URL": self.gateway.base_url,
            "OFFLOAD_API_KEY": self.key(tenant),
            "OFFLOAD_ADMIN_KEY": ADMIN_KEY,
            "COLUMNS": "200",
        }


@pytest.fixture(scope="module")
def notifier_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gateway_overrides(notifier_port: int) -> dict[str, Any]:
    # Each job's `links.events` points at this module's notifier.
    return {"notifier_public_url": f"http://127.0.0.1:{notifier_port}"}


@pytest.fixture(scope="module")
async def stack(infra: Infra, gateway: RunningGateway, notifier_port: int) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as stack:
        # ~60 tokens at 40/s: an ai job runs for about 1.5 s, long enough to be seen
        # progressing and to be cancelled while active.
        sandbox = await stack.enter_async_context(
            running_sandbox(
                sandbox_llm_ttft_ms=50, sandbox_llm_tokens_per_s=40, sandbox_llm_answer_tokens=60
            )
        )
        settings = gateway.settings
        notifier = build_notifier(
            NotifierSettings(
                rabbitmq_url=infra.rabbitmq_url,
                redis_url=infra.redis_url,
                redis_prefix=settings.redis_prefix,
                api_keys=settings.api_keys,
                notifier_service=f"nt{uuid.uuid4().hex[:10]}",
                retry_tiers=settings.retry_tiers,
                relay_block_ms=100,
                sse_block_ms=500,
                log_level="warning",
            )
        )
        notifier_url = await stack.enter_async_context(serve(notifier, port=notifier_port))
        shared: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": settings.redis_prefix,
            "storage_dir": settings.storage_dir,
            # A rate-limited call (Retry-After: 1 s) waits in the 10 s tier: time for a
            # CLI process to start and cancel the job while it is delayed.
            "retry_tiers": "50ms,10s",
            "shutdown_grace_s": 1,
            "log_level": "warning",
        }
        workers = (
            build_ai(AiSettings(**shared, llm_base_url=sandbox.llm_base_url)),
            build_image(ImageSettings(**shared, image_pool_size=1)),
        )
        for worker in workers:
            await worker.app.start()
            stack.push_async_callback(worker.app.stop)
        yield Stack(gateway, notifier_url)


def png(width: int = 320, height: int = 200) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- the client


async def test_submit_then_wait_follows_the_job_over_sse_to_its_result(stack: Stack) -> None:
    seen: list[Job] = []
    async with stack.client() as client:
        job = await client.submit("ai.generate", {"prompt": "Write a haiku about queues."})
        assert job.status is JobStatus.WAITING and job.attempt == 0
        # Polling once an hour: only the SSE stream can finish this in time.
        done = await client.wait(job.id, timeout_s=30, poll_interval_s=3600, on_update=seen.append)
    assert done.status is JobStatus.COMPLETED
    assert done.result and done.result["text"] and done.result["model"] == "sandbox"
    assert done.finished_at is not None
    statuses = [update.status for update in seen]
    # The first update is the job as `wait` found it: still waiting, or already
    # started (the worker can take it before the client's first read). From there
    # the updates follow the lifecycle, never back.
    lifecycle = [JobStatus.WAITING, JobStatus.ACTIVE, JobStatus.COMPLETED]
    assert [lifecycle.index(status) for status in statuses] == sorted(
        lifecycle.index(status) for status in statuses
    ), statuses
    assert statuses[-1] is JobStatus.COMPLETED
    assert JobStatus.ACTIVE in statuses
    partial = [u.percent for u in seen if u.status is JobStatus.ACTIVE and 0 < u.percent < 100]
    assert partial, f"no progress seen between 0 and 100%: {[u.percent for u in seen]}"


async def test_a_jobs_links_answer_where_they_point(stack: Stack) -> None:
    # As any HTTP client would: each link resolved against the URL the job came from.
    async with stack.gateway.client() as http:
        answer = await http.post("/v1/jobs", json={"type": "ai.generate", "input": {"prompt": "?"}})
        links = answer.json()["links"]
        events: list[str] = []
        async with (
            asyncio.timeout(30),
            http.stream("GET", http.base_url.join(links["events"])) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    events.append(line.removeprefix("event:").strip())
        job = (await http.get(http.base_url.join(links["self"]))).json()
    assert links["events"] == f"{stack.notifier_url}/v1/jobs/{job['id']}/events"
    assert events[0] == "queued" and events[-1] == "completed"  # the stream ends at the outcome
    assert job["status"] == "completed" and job["links"]["events"] == links["events"]


async def test_without_the_notifier_wait_polls_to_the_same_result(stack: Stack) -> None:
    async with stack.client(notifier_url="") as client:
        job = await client.submit("ai.generate", {"prompt": "Poll me."})
        done = await client.wait(job.id, timeout_s=30, poll_interval_s=0.1)
    assert done.status is JobStatus.COMPLETED and done.result


async def test_wait_gives_up_at_its_timeout_and_the_job_carries_on(stack: Stack) -> None:
    async with stack.client() as client:
        job = await client.submit("ai.generate", {"prompt": "Take your time."})
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(job.id, timeout_s=0.3)
        assert not caught.value.job.finished
        assert (await client.wait(job.id, timeout_s=30)).status is JobStatus.COMPLETED


async def test_the_sync_client_does_the_same_from_a_thread(stack: Stack) -> None:
    def run() -> Job:
        with Offload(stack.gateway.base_url, api_key=stack.key()) as client:
            job = client.submit("ai.generate", {"prompt": "Sync."}, idempotency_key="sync-1")
            again = client.submit("ai.generate", {"prompt": "Sync."}, idempotency_key="sync-1")
            assert again.id == job.id  # same key, same body: the same job
            return client.wait(job.id, timeout_s=30)

    done = await asyncio.to_thread(run)
    assert done.status is JobStatus.COMPLETED


async def test_bad_input_raises_validation_failed_naming_the_field(stack: Stack) -> None:
    async with stack.client() as client:
        before = await client.list(limit=100)
        with pytest.raises(ValidationFailed) as caught:
            await client.submit("ai.generate", {"prompt": "", "temperature": 9})
        after = await client.list(limit=100)
    fields = {tuple(error["loc"])[-1] for error in caught.value.errors}
    assert {"prompt", "temperature"} <= fields
    assert caught.value.status == 422 and caught.value.detail
    assert [job.id for job in after.items] == [job.id for job in before.items]


async def test_another_tenants_job_is_not_found(stack: Stack) -> None:
    async with stack.client("acme") as acme, stack.client("globex") as globex:
        job = await acme.submit("ai.generate", {"prompt": "Mine."})
        with pytest.raises(NotFound):
            await globex.get(job.id)
        with pytest.raises(NotFound):
            await globex.cancel(job.id)
        await acme.wait(job.id, timeout_s=30)


async def test_cancel_stops_an_active_job_and_a_second_cancel_conflicts(stack: Stack) -> None:
    async with stack.client() as client:
        job = await client.submit("ai.generate", {"prompt": "Long story.", "max_tokens": 2000})
        async with contextlib.aclosing(client.watch(job.id, timeout_s=30)) as updates:
            async for update in updates:
                if update.status is JobStatus.ACTIVE:
                    break
        cancelled = await client.cancel(job.id)
        assert cancelled.status is JobStatus.CANCELLED
        with pytest.raises(Conflict):
            await client.cancel(job.id)
        assert (await client.wait(job.id, timeout_s=5)).status is JobStatus.CANCELLED


async def test_list_pages_through_the_tenants_jobs_newest_first(stack: Stack) -> None:
    async with stack.client("globex") as client:
        made = [(await client.submit("ai.generate", {"prompt": f"n{i}"})).id for i in range(3)]
        listed = [job.id async for job in client.iter_jobs(type="ai.generate", page_size=2)]
        for job_id in made:
            await client.wait(job_id, timeout_s=30)
    assert listed[:3] == made[::-1]


async def test_upload_then_download_round_trips_with_the_checksum(
    stack: Stack, tmp_path: Path
) -> None:
    content = os.urandom(300_000)
    source = tmp_path / "blob.bin"
    source.write_bytes(content)
    async with stack.client() as client:
        stored = await client.upload(source)
        assert stored.bytes == len(content)
        assert stored.sha256 == hashlib.sha256(content).hexdigest()
        fetched = await client.download(stored, tmp_path / "copy.bin")
        assert fetched.read_bytes() == content
        tampered = FileInfo(**{**stored.model_dump(), "sha256": "0" * 64})
        with pytest.raises(ChecksumMismatch):
            await client.download(tampered, tmp_path / "bad.bin")
        with pytest.raises(NotFound):
            await client.download("no-such-file", tmp_path / "none.bin")
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "none.bin").exists()


# --------------------------------------------------------------------------- the CLI


async def offload_cli(
    stack: Stack, *args: str, tenant: str = "acme", **env: str
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "offload",
        *args,
        cwd=ROOT,
        env={**stack.cli_env(tenant), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_upload_submit_watch_and_download_an_image_job(
    stack: Stack, tmp_path: Path
) -> None:
    picture = tmp_path / "gradient.png"
    picture.write_bytes(png())
    code, out, err = await offload_cli(stack, "upload", str(picture))
    assert code == 0, err
    file_id = json.loads(out)["id"]

    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "source": {"file_id": file_id},
                "operations": [
                    {"op": "resize", "width": 160},
                    {"op": "convert", "format": "webp"},
                    {"op": "thumbnails", "sizes": [{"width": 32, "height": 32}]},
                ],
            }
        )
    )
    code, out, err = await offload_cli(
        stack, "submit", "image.process", "--input", f"@{spec}", "--watch", "--json"
    )
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "completed"
    assert (job["result"]["width"], job["result"]["height"], job["result"]["format"]) == (
        160,
        100,
        "webp",
    )
    assert "100%" in err  # the progress bar, on stderr

    code, out, err = await offload_cli(stack, "status", job["id"])
    assert code == 0, err
    assert "completed" in out and "160" in out

    code, out, err = await offload_cli(stack, "download", "--job", job["id"], "-o", str(tmp_path))
    assert code == 0, err
    saved = sorted(tmp_path.glob("*.webp"))  # noqa: ASYNC240 (a tiny local directory)
    assert len(saved) == 2  # the image and its thumbnail
    with Image.open(saved[0]) as first, Image.open(saved[1]) as second:
        assert {first.size, second.size} == {(160, 100), (32, 20)}


async def test_cli_refuses_bad_input_with_the_field_and_a_nonzero_status(stack: Stack) -> None:
    code, _, err = await offload_cli(stack, "submit", "ai.generate", "--input", '{"prompt": ""}')
    assert code == 1
    assert "prompt" in err and "422" in err


async def test_cli_names_an_unknown_job_type_and_the_known_ones(stack: Stack) -> None:
    code, _, err = await offload_cli(stack, "submit", "ai.generat", "--input", '{"prompt": "x"}')
    assert code == 1
    lines = err.splitlines()
    assert "  type: unknown job type 'ai.generat'; known types: ai.generate, research.run, " in (
        "\n".join(lines)
    )
    assert not [line for line in lines if line.startswith("  :")]  # no empty location


async def test_cli_lists_and_cancels(stack: Stack) -> None:
    async with stack.client() as client:
        done = await client.submit("ai.generate", {"prompt": "Listed."})
        await client.wait(done.id, timeout_s=30)
        delayed = await client.submit(
            "ai.generate", {"prompt": "Later.", "model": "sandbox-ratelimit-5"}
        )
        async with contextlib.aclosing(client.watch(delayed.id, timeout_s=30)) as updates:
            async for update in updates:
                if update.status is JobStatus.DELAYED:
                    break

    code, out, err = await offload_cli(stack, "list", "--json", "--limit", "5")
    assert code == 0, err
    assert {done.id, delayed.id} <= {job["id"] for job in json.loads(out)["items"]}

    code, out, err = await offload_cli(stack, "cancel", delayed.id)
    assert code == 0, err
    assert "cancelled" in out
    code, _, err = await offload_cli(stack, "cancel", delayed.id)
    assert code == 1 and "409" in err and "cancelled" in err


async def dead_letter_of(client: AsyncOffload, queue: str, job_id: str) -> DeadLetter | None:
    """The job's letter in the dead queue (other tests' letters may be there too)."""
    offset: int | None = 0
    while offset is not None:
        page = await client.dead_letters(queue, offset=offset, limit=200)
        for letter in page.items:
            if letter.job_id == job_id:
                return letter
        offset = page.next_offset
    return None


async def test_cli_lists_and_replays_a_dead_letter(stack: Stack) -> None:
    async with stack.client(admin_key=ADMIN_KEY) as client:
        job = await client.submit("ai.generate", {"prompt": "No.", "model": "sandbox-reject"})
        failed = await client.wait(job.id, timeout_s=30)
        assert failed.status is JobStatus.FAILED and failed.attempt == 1
        letter = await dead_letter_of(client, "ai", job.id)
        assert letter is not None and letter.reason == "failed" and letter.error

        code, out, err = await offload_cli(stack, "dead-letters", "list", "ai", "--limit", "5")
        assert code == 0, err
        assert "ai.dead:" in out and "dead letter(s)" in out

        code, out, err = await offload_cli(stack, "dead-letters", "replay", "ai", "--job", job.id)
        assert code == 0, err
        assert "replayed 1 from ai.dead" in out and job.id in out
        # It ran again (the sandbox rejects it again) and is parked again.
        await wait_until(
            lambda: dead_letter_of(client, "ai", job.id),
            timeout=30,
            what="the replayed job parked again",
            interval=0.2,
        )
        assert (await client.get(job.id)).status is JobStatus.FAILED

    # Without an admin key the tenant's key is sent, and refused.
    code, _, err = await offload_cli(stack, "dead-letters", "list", "ai", OFFLOAD_ADMIN_KEY="")
    assert code == 1 and "403" in err and "admin key" in err
