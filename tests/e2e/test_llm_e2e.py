"""ai.generate and research.run through the gateway over HTTP, with real workers and the sandbox.

The issue's "done when": both types complete against the sandbox;
`sandbox-fail-2` completes on attempt 3; `sandbox-reject` fails on attempt 1
with a clear error; `sandbox-fail-99` ends in the dead queue after the type's
max attempts; and `DELETE /v1/jobs/{id}` stops an active generation's stream.
"""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from offload_ai.app import build_app as build_ai
from offload_ai.settings import AiSettings
from offload_contracts import topology
from offload_research.app import build_app as build_research
from offload_research.settings import ResearchSettings
from tests.support.gateway import RunningGateway, poll_job, running_gateway, submit_job
from tests.support.infra import Infra
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.service_driver import ServiceDriver
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
async def stack(infra: Infra) -> AsyncIterator[tuple[RunningGateway, RunningSandbox]]:
    """The gateway, the sandbox, and one ai and one research worker sharing its Redis prefix."""
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            # Every answer runs to its max_tokens (the natural length is far above it), at
            # 4,000 tokens/s: the usual 512 take ~0.13 s, and the cancel test's 32,768 take
            # ~8 s, so its DELETE always lands mid-stream, however loaded the machine.
            running_sandbox(
                sandbox_llm_ttft_ms=50,
                sandbox_llm_tokens_per_s=4000,
                sandbox_llm_answer_tokens=100_000,
            )
        )
        gateway = await stack.enter_async_context(running_gateway(infra))
        shared: dict[str, Any] = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": gateway.settings.redis_prefix,
            "retry_tiers": gateway.settings.retry_tiers,
            "shutdown_grace_s": 1,
            "log_level": "warning",
            "llm_base_url": sandbox.llm_base_url,
        }
        for worker in (build_ai(AiSettings(**shared)), build_research(ResearchSettings(**shared))):
            await worker.app.start()
            stack.push_async_callback(worker.app.stop)
        yield gateway, sandbox


async def sandbox_calls(sandbox: RunningSandbox, job_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url("/v1/sandbox/llm/calls"), params={"job": job_id})
    calls: list[dict[str, Any]] = answer.json()["calls"]
    return calls


async def test_ai_generate_completes(stack: tuple[RunningGateway, RunningSandbox]) -> None:
    gateway, _ = stack
    async with gateway.client() as http:
        job_id = await submit_job(http, "ai.generate", {"prompt": "Write a haiku about queues."})
        job = await poll_job(http, job_id)

    assert job["status"] == "completed" and job["attempt"] == 1
    result = job["result"]
    assert result["text"] and result["model"] == "sandbox"
    assert result["usage"]["completion_tokens"] == len(result["text"].split())
    assert job["error"] is None


async def test_research_run_completes(stack: tuple[RunningGateway, RunningSandbox]) -> None:
    gateway, sandbox = stack
    async with gateway.client() as http:
        job_id = await submit_job(http, "research.run", {"question": "How do quorum queues work?"})
        job = await poll_job(http, job_id)

    assert job["status"] == "completed" and job["attempt"] == 1
    assert len(job["result"]["steps"]) == 3  # the contract's default
    assert all(step["question"] and step["answer"] for step in job["result"]["steps"])
    assert job["result"]["report"]
    assert len(await sandbox_calls(sandbox, job_id)) == 5  # plan, 3 answers, report


async def test_sandbox_fail_2_completes_on_attempt_3(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, _ = stack
    async with gateway.client() as http:
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "Hello", "model": "sandbox-fail-2"}
        )
        job = await poll_job(http, job_id)
    assert job["status"] == "completed"
    assert job["attempt"] == 3


async def test_sandbox_reject_fails_on_attempt_1_with_a_clear_error(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, _ = stack
    async with gateway.client() as http:
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "Hello", "model": "sandbox-reject"}
        )
        job = await poll_job(http, job_id)
    assert job["status"] == "failed"
    assert job["attempt"] == 1
    assert job["error"] == {
        "type": "permanent",
        "message": "LLM provider answered HTTP 400: sandbox-reject refuses every request "
        "(an injected permanent error).",
        "retryable": False,
    }


async def test_sandbox_fail_99_ends_in_the_dead_queue_after_max_attempts(
    stack: tuple[RunningGateway, RunningSandbox], infra: Infra
) -> None:
    gateway, sandbox = stack
    async with gateway.client() as http:
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "Hello", "model": "sandbox-fail-99"}
        )
        job = await poll_job(http, job_id)

    assert job["status"] == "failed"
    assert job["attempt"] == job["max_attempts"] == 3
    assert "attempts exhausted: 3 of 3" in job["error"]["message"]
    assert len(await sandbox_calls(sandbox, job_id)) == 3
    dead = await ServiceDriver(infra, "ai").take_dead(job_id)
    assert dead.headers[topology.HEADER_ATTEMPT] == 3


async def test_delete_stops_an_active_generation(
    stack: tuple[RunningGateway, RunningSandbox],
) -> None:
    gateway, sandbox = stack
    async with gateway.client() as http:
        # 32,768 tokens at 4,000/s: ~8 s of streaming unless cancelled.
        job_id = await submit_job(
            http, "ai.generate", {"prompt": "A long story.", "max_tokens": 32_768}
        )
        await wait_until(
            lambda: sandbox_calls(sandbox, job_id),
            timeout=10,
            what="the generation started",
            interval=0.02,
        )

        cancelled = await http.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        calls = await wait_until(
            lambda: sandbox_calls(sandbox, job_id),
            lambda calls: calls[-1]["outcome"] != "streaming",
            timeout=3,
            what="the stream closed",
            interval=0.02,
        )
        job = (await http.get(f"/v1/jobs/{job_id}")).json()

    assert job["status"] == "cancelled"
    assert calls[-1]["outcome"] == "disconnected"
    assert calls[-1]["completion_tokens"] < 32_768
