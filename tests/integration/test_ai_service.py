"""The ai service (its own build_app) through the real broker and Redis, against the sandbox LLM."""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from offload_ai.app import build_app
from offload_ai.settings import AiSettings
from offload_contracts import EventKind, JobStatus, topology
from offload_runtime.worker import Worker
from tests.support.infra import Infra
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.service_driver import ServiceDriver
from tests.support.waiting import sync_probe, wait_until


@pytest.fixture
async def driver(infra: Infra) -> AsyncIterator[ServiceDriver]:
    d = ServiceDriver(infra, "ai")
    await d.open()
    yield d
    await d.close()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=2000, sandbox_llm_answer_tokens=60
    ) as running:
        yield running


@pytest.fixture
async def slow_sandbox() -> AsyncIterator[RunningSandbox]:
    # 40 tokens a second: 60 tokens take ~1.5 s, long enough to see progress events.
    async with running_sandbox(
        sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=40, sandbox_llm_answer_tokens=60
    ) as running:
        yield running


@asynccontextmanager
async def ai_worker(
    driver: ServiceDriver, sandbox: RunningSandbox, **overrides: Any
) -> AsyncIterator[Worker]:
    settings = AiSettings(**driver.worker_settings(llm_base_url=sandbox.llm_base_url, **overrides))
    worker = build_app(settings)
    await worker.app.start()
    try:
        yield worker
    finally:
        await worker.app.stop()


async def sandbox_calls(sandbox: RunningSandbox, job_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url("/v1/sandbox/llm/calls"), params={"job": job_id})
    calls: list[dict[str, Any]] = answer.json()["calls"]
    return calls


async def test_ai_generate_streams_the_sandbox_answer_into_the_result(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with ai_worker(driver, sandbox):
        job = await driver.submit(
            "ai.generate", prompt="Explain message queues.", system="Be brief."
        )
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED and record.attempt == 1
    # The same prompt asked of the sandbox directly gets the same text.
    async with httpx.AsyncClient() as http:
        direct = await http.post(
            sandbox.url("/v1/chat/completions"),
            json={
                "model": "sandbox",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Explain message queues."},
                ],
            },
            headers={"x-sandbox-ttft-ms": "0", "x-sandbox-tokens-per-s": "100000"},
        )
    expected = direct.json()
    assert record.result is not None
    assert record.result["text"] == expected["choices"][0]["message"]["content"]
    assert record.result["model"] == "sandbox"
    assert record.result["usage"] == expected["usage"]
    [call] = await sandbox_calls(sandbox, job.id)
    assert (call["stream"], call["outcome"]) == (True, "completed")


async def test_progress_reports_token_share_and_characters_at_most_twice_a_second(
    driver: ServiceDriver, slow_sandbox: RunningSandbox
) -> None:
    async with ai_worker(driver, slow_sandbox):
        job = await driver.submit("ai.generate", prompt="Tell a long story.", max_tokens=100)
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED
    progress = [e for e in await driver.events(job.id) if e.event == EventKind.PROGRESS]
    assert len(progress) >= 2  # ~1.5 s of streaming
    percents = [e.progress.percent for e in progress if e.progress]
    assert percents == sorted(percents) and percents[0] > 0 and percents[-1] < 100
    assert all(e.progress and e.progress.message.endswith("characters generated") for e in progress)
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(progress)]
    assert min(gaps) >= 0.45, gaps


async def test_sandbox_fail_2_completes_on_attempt_3(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with ai_worker(driver, sandbox):
        job = await driver.submit("ai.generate", prompt="Hello", model="sandbox-fail-2")
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED
    assert record.attempt == 3
    assert record.result is not None and record.result["model"] == "sandbox-fail-2"
    kinds = [(e.event, e.attempt) for e in await driver.events(job.id)]
    assert kinds == [
        (EventKind.QUEUED, 0),
        (EventKind.STARTED, 1),
        (EventKind.RETRYING, 1),
        (EventKind.STARTED, 2),
        (EventKind.RETRYING, 2),
        (EventKind.STARTED, 3),
        *[(EventKind.PROGRESS, 3)] * (len(kinds) - 7),
        (EventKind.COMPLETED, 3),
    ]
    retrying = [e for e in await driver.events(job.id) if e.event == EventKind.RETRYING]
    assert all(e.error and "HTTP 503" in e.error.message for e in retrying)
    assert [c["status"] for c in await sandbox_calls(sandbox, job.id)] == [503, 503, 200]


async def test_sandbox_reject_fails_on_attempt_1_with_the_providers_message(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with ai_worker(driver, sandbox):
        job = await driver.submit("ai.generate", prompt="Hello", model="sandbox-reject")
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.FAILED
    assert record.attempt == 1
    assert record.error is not None
    assert record.error.type == "permanent" and not record.error.retryable
    assert record.error.message == (
        "LLM provider answered HTTP 400: sandbox-reject refuses every request "
        "(an injected permanent error)."
    )
    dead = await driver.take_dead(job.id)
    assert dead.headers[topology.HEADER_ERROR_TYPE] == "permanent"
    assert len(await sandbox_calls(sandbox, job.id)) == 1


async def test_sandbox_fail_99_ends_in_the_dead_queue_after_the_types_max_attempts(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with ai_worker(driver, sandbox):
        job = await driver.submit("ai.generate", prompt="Hello", model="sandbox-fail-99")
        record = await driver.wait_status(job.id)

    assert job.max_attempts == 3  # the ai.generate policy
    assert record.status == JobStatus.FAILED
    assert record.attempt == 3
    assert record.error is not None and record.error.retryable
    assert "HTTP 503" in record.error.message
    assert "attempts exhausted: 3 of 3" in record.error.message
    dead = await driver.take_dead(job.id)
    assert dead.headers[topology.HEADER_ATTEMPT] == 3
    assert [c["status"] for c in await sandbox_calls(sandbox, job.id)] == [503, 503, 503]


async def test_one_process_holds_fifty_two_second_calls_at_once(driver: ServiceDriver) -> None:
    async with (
        running_sandbox(
            sandbox_llm_ttft_ms=2000, sandbox_llm_tokens_per_s=1000, sandbox_llm_answer_tokens=20
        ) as slow,
        ai_worker(driver, slow),
    ):
        began = time.perf_counter()
        jobs = await asyncio.gather(
            *(driver.submit("ai.generate", prompt=f"Question {i}") for i in range(50))
        )
        records = [await driver.wait_status(job.id, timeout=20) for job in jobs]
        elapsed = time.perf_counter() - began

    print(f"\n50 ai.generate jobs of 2 s sandbox latency, one worker process: {elapsed:.2f} s")
    assert all(r.status == JobStatus.COMPLETED for r in records)
    assert elapsed < 6, f"50 jobs took {elapsed:.2f}s: the calls did not run concurrently"


async def test_cancelling_an_active_job_closes_its_stream_at_once(
    driver: ServiceDriver, slow_sandbox: RunningSandbox
) -> None:
    sandbox = slow_sandbox
    async with ai_worker(driver, sandbox) as worker:
        # 2000 tokens at 40/s would stream for ~50 s.
        job = await driver.submit("ai.generate", prompt="Write a novel.", max_tokens=2000)
        await wait_until(
            lambda: _first_progress(driver, job.id),
            timeout=5,
            what="the first progress event",
            interval=0.01,
        )
        active = await driver.store.get(job.id)
        assert active is not None and active.status == JobStatus.ACTIVE

        assert (await driver.store.cancel(active)).applied
        began = time.monotonic()
        await wait_until(
            sync_probe(lambda: worker.runner.running_jobs == 0),
            timeout=2,
            what="the job's task stopped",
            interval=0.01,
        )
        stopped_after = time.monotonic() - began
        began = time.monotonic()
        await wait_until(
            lambda: _sandbox_outcome(sandbox, job.id, "disconnected"),
            timeout=2,
            what="the sandbox's stream closed",
            interval=0.01,
        )
        closed_after = time.monotonic() - began

    print(f"\ncancel: task stopped after {stopped_after:.3f}s, stream closed {closed_after:.3f}s")
    record = await driver.store.get(job.id)
    assert record is not None and record.status == JobStatus.CANCELLED
    [call] = await sandbox_calls(sandbox, job.id)
    assert call["completion_tokens"] < 200
    kinds = [e.event for e in await driver.events(job.id)]
    assert kinds[-1] == EventKind.CANCELLED and EventKind.COMPLETED not in kinds


async def _first_progress(driver: ServiceDriver, job_id: str) -> bool:
    return any(e.event == EventKind.PROGRESS for e in await driver.events(job_id))


async def _sandbox_outcome(sandbox: RunningSandbox, job_id: str, outcome: str) -> bool:
    calls = await sandbox_calls(sandbox, job_id)
    return bool(calls) and calls[-1]["outcome"] == outcome
