"""The OpenAI-compatible LLM adapter against the sandbox LLM, over real HTTP."""

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.llm.openai_compatible import LlmSettings, OpenAICompatibleClient
from offload_runtime.llm.ports import ChatMessage, ChatRequest, collect
from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(
        sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=100_000, sandbox_llm_answer_tokens=30
    ) as running:
        yield running


def client_for(base_url: str, **overrides: Any) -> OpenAICompatibleClient:
    return OpenAICompatibleClient(LlmSettings(llm_base_url=base_url, **overrides))


@pytest.fixture
async def llm(sandbox: RunningSandbox) -> AsyncIterator[OpenAICompatibleClient]:
    client = client_for(sandbox.llm_base_url, llm_api_key="sk-test-secret")
    yield client
    await client.aclose()


def ask(model: str | None = None, job_id: str | None = None, **extra: Any) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage("user", "Tell me about queues.")],
        model=model,
        job_id=job_id or uuid.uuid4().hex,
        **extra,
    )


async def sandbox_calls(sandbox: RunningSandbox, job: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(sandbox.url("/v1/sandbox/llm/calls"), params={"job": job})
    calls: list[dict[str, Any]] = answer.json()["calls"]
    return calls


async def test_streams_the_answer_then_model_usage_and_finish_reason(
    llm: OpenAICompatibleClient, sandbox: RunningSandbox
) -> None:
    request = ask()
    chunks = [chunk async for chunk in llm.stream(request)]

    *texts, final = chunks
    assert len(texts) > 5 and all(c.text and not c.done for c in texts)
    assert final.done and final.model == "sandbox" and final.finish_reason == "stop"
    assert final.usage is not None and not final.usage.estimated
    assert final.usage.completion_tokens == len(texts)
    assert final.usage.prompt_tokens == 4
    # Sent under the job's id, with the configured default model, as one streamed call.
    [call] = await sandbox_calls(sandbox, request.job_id or "")
    assert (call["model"], call["stream"], call["outcome"]) == ("sandbox", True, "completed")


async def test_the_same_prompt_gets_the_same_text(llm: OpenAICompatibleClient) -> None:
    first = await collect(llm, ask())
    second = await collect(llm, ask())
    assert first.text == second.text and first.text.endswith(".")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_is_sent_in_the_configured_field(
    sandbox: RunningSandbox, field: str
) -> None:
    client = client_for(sandbox.llm_base_url, llm_max_tokens_field=field)
    try:
        done = await collect(client, ask(max_tokens=5))
    finally:
        await client.aclose()
    assert done.finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5


async def test_usage_is_estimated_when_the_stream_reports_none(sandbox: RunningSandbox) -> None:
    client = client_for(sandbox.llm_base_url, llm_stream_usage=False)
    try:
        done = await collect(client, ask())
    finally:
        await client.aclose()
    assert done.usage is not None and done.usage.estimated
    assert done.usage.completion_tokens == len(done.text.split())


async def test_a_503_is_transient_and_the_next_call_of_the_job_works(
    llm: OpenAICompatibleClient,
) -> None:
    job = uuid.uuid4().hex
    with pytest.raises(TransientError) as raised:
        await collect(llm, ask("sandbox-fail-1", job))
    assert "HTTP 503" in raised.value.message and "call 1 of job" in raised.value.message
    assert raised.value.retry_after is None
    assert (await collect(llm, ask("sandbox-fail-1", job))).text


async def test_a_429_is_transient_with_the_providers_retry_after(
    llm: OpenAICompatibleClient,
) -> None:
    with pytest.raises(TransientError) as raised:
        await collect(llm, ask("sandbox-ratelimit-1"))
    assert "HTTP 429" in raised.value.message
    assert raised.value.retry_after == 1.0


async def test_a_400_is_permanent_with_the_providers_message(
    llm: OpenAICompatibleClient,
) -> None:
    with pytest.raises(PermanentError) as raised:
        await collect(llm, ask("sandbox-reject"))
    assert raised.value.message == (
        "LLM provider answered HTTP 400: sandbox-reject refuses every request "
        "(an injected permanent error)."
    )


async def test_an_unknown_model_is_permanent(llm: OpenAICompatibleClient) -> None:
    with pytest.raises(PermanentError, match=r"HTTP 404: The model `gpt-none` does not exist"):
        await collect(llm, ask("gpt-none"))


async def test_a_stream_that_ends_before_done_is_transient(llm: OpenAICompatibleClient) -> None:
    with pytest.raises(TransientError, match="stream ended before the answer was complete"):
        await collect(llm, ask("sandbox-drop-1"))


async def test_a_provider_too_slow_to_answer_times_out_as_transient() -> None:
    async with running_sandbox(sandbox_llm_ttft_ms=3000) as slow:
        client = client_for(slow.llm_base_url, llm_read_timeout_s=0.2)
        began = time.perf_counter()
        try:
            with pytest.raises(TransientError, match=r"timed out \(waiting for the answer\)"):
                await collect(client, ask())
        finally:
            await client.aclose()
    assert time.perf_counter() - began < 2


async def test_an_unreachable_provider_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(TransientError, match="connection failed: ConnectError"):
            await collect(client, ask())
    finally:
        await client.aclose()


async def test_the_api_key_never_appears_in_an_error(sandbox: RunningSandbox) -> None:
    # A provider that echoes the key back in its message gets it masked.
    client = client_for(sandbox.llm_base_url, llm_api_key="sandbox-reject")
    try:
        with pytest.raises(PermanentError) as raised:
            await collect(client, ask("sandbox-reject"))
    finally:
        await client.aclose()
    assert "sandbox-reject" not in raised.value.message
    assert "[redacted] refuses every request" in raised.value.message


async def test_cancelling_the_consumer_closes_the_stream_at_once() -> None:
    async with running_sandbox(sandbox_llm_ttft_ms=0, sandbox_llm_tokens_per_s=20) as slow:
        client = client_for(slow.llm_base_url)
        job = uuid.uuid4().hex
        first_text = asyncio.Event()

        async def consume() -> None:
            async for chunk in client.stream(ask(job_id=job, max_tokens=1000)):
                if chunk.text:
                    first_text.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_text.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        await wait_until(
            lambda: sandbox_calls(slow, job),
            lambda calls: calls[0]["outcome"] != "streaming",
            timeout=2,
            what="the sandbox to stop streaming to a cancelled job",
            interval=0.01,
        )
        [call] = await sandbox_calls(slow, job)
        await client.aclose()
    assert call["outcome"] == "disconnected"
    assert call["completion_tokens"] < 10
