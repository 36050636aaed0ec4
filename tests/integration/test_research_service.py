"""The research service (its own build_app) through the real broker and Redis and the sandbox."""

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from offload_contracts import EventKind, JobStatus
from offload_research.app import build_app
from offload_research.settings import ResearchSettings
from offload_runtime.worker import Worker
from tests.support.infra import Infra
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.service_driver import ServiceDriver


@pytest.fixture
async def driver(infra: Infra) -> AsyncIterator[ServiceDriver]:
    d = ServiceDriver(infra, "research")
    await d.open()
    yield d
    await d.close()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=5000, sandbox_llm_answer_tokens=80
    ) as running:
        yield running


@asynccontextmanager
async def research_worker(
    driver: ServiceDriver, sandbox: RunningSandbox, **overrides: Any
) -> AsyncIterator[Worker]:
    settings = ResearchSettings(
        **driver.worker_settings(llm_base_url=sandbox.llm_base_url, **overrides)
    )
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


def step_of(call: dict[str, Any]) -> str:
    """Which step of the chain a sandbox call was, from the user message it received."""
    prompt: str = call["prompt"]
    if prompt.startswith("Question:"):
        return "plan"
    if prompt.startswith("Sub-question:"):
        return "answer"
    assert prompt.startswith("Findings for the question:"), prompt
    return "report"


async def test_research_run_plans_answers_and_reports(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with research_worker(driver, sandbox):
        job = await driver.submit("research.run", question="How do queues scale?", steps=4)
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED and record.attempt == 1
    assert record.result is not None
    steps = record.result["steps"]
    assert len(steps) == 4
    assert all(step["question"] and step["answer"] for step in steps)
    assert len({step["answer"] for step in steps}) == 4  # each sub-question got its own answer
    assert record.result["report"]
    calls = await sandbox_calls(sandbox, job.id)
    assert [step_of(c) for c in calls].count("plan") == 1
    assert Counter(step_of(c) for c in calls) == {"plan": 1, "answer": 4, "report": 1}
    assert step_of(calls[-1]) == "report"
    # Every step's output is checkpointed in Redis under the job.
    saved = await driver.redis.hgetall(driver.keys.job_checkpoints(job.id))
    assert json.loads(saved["plan"]) == [step["question"] for step in steps]
    assert [saved[f"answer:{i}"] for i in range(1, 5)] == [step["answer"] for step in steps]
    assert saved["report"] == record.result["report"]


async def test_a_retry_after_a_failed_step_does_not_repeat_the_steps_before_it(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    # Call 4 of the job (the third of its three answers) answers 503 once.
    async with research_worker(driver, sandbox):
        job = await driver.submit(
            "research.run", question="Why is the sky blue?", steps=3, model="sandbox-fail-at-4"
        )
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED
    assert record.attempt == 2
    calls = await sandbox_calls(sandbox, job.id)
    # Attempt 1: plan + 3 answers (call 4 fails). Attempt 2: only the failed answer, then
    # the report. Without checkpoints attempt 2 would have made all 5 calls again (9 in all).
    assert [(c["index"], c["status"]) for c in calls] == [
        (1, 200),
        (2, 200),
        (3, 200),
        (4, 503),
        (5, 200),
        (6, 200),
    ]
    assert [step_of(c) for c in calls] == [
        "plan",
        "answer",
        "answer",
        "answer",
        "answer",
        "report",
    ]
    # The answer asked again is the one that failed.
    assert calls[4]["prompt"] == calls[3]["prompt"]
    assert record.result is not None and len(record.result["steps"]) == 3


async def test_progress_names_each_step(driver: ServiceDriver) -> None:
    # Each call takes 0.6 s and answers go one at a time, so no step's progress
    # falls inside another's half-second throttle window.
    async with (
        running_sandbox(
            sandbox_llm_ttft_ms=600, sandbox_llm_tokens_per_s=5000, sandbox_llm_answer_tokens=40
        ) as slow,
        research_worker(driver, slow, research_answer_concurrency=1),
    ):
        job = await driver.submit("research.run", question="What is RabbitMQ?", steps=3)
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.COMPLETED
    progress = [
        (e.progress.percent, e.progress.message)
        for e in await driver.events(job.id)
        if e.event == EventKind.PROGRESS and e.progress
    ]
    assert progress == [
        (0, "plan: splitting the question into 3 sub-questions"),
        (20, "answers: researching 3 of 3 sub-questions"),
        (40, "answers: 1 of 3 sub-questions answered"),
        (60, "answers: 2 of 3 sub-questions answered"),
        (80, "synthesis: writing the report"),
    ]


async def test_sandbox_reject_fails_on_attempt_1(
    driver: ServiceDriver, sandbox: RunningSandbox
) -> None:
    async with research_worker(driver, sandbox):
        job = await driver.submit("research.run", question="Anything?", model="sandbox-reject")
        record = await driver.wait_status(job.id)

    assert record.status == JobStatus.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "permanent"
    assert "HTTP 400" in record.error.message
    await driver.take_dead(job.id)
