"""The sandbox LLM over real HTTP: OpenAI's wire format, pacing and failure injection."""

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.sandbox import RunningSandbox, running_sandbox
from tests.support.waiting import wait_until

FAST = {"x-sandbox-ttft-ms": "0", "x-sandbox-tokens-per-s": "100000"}


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(sandbox_llm_answer_tokens=40) as running:
        yield running


@pytest.fixture
async def http(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
        yield client


def body(prompt: str = "Why is the sky blue?", **extra: Any) -> dict[str, Any]:
    return {"model": "sandbox", "messages": [{"role": "user", "content": prompt}], **extra}


def job_headers(job: str | None = None, **extra: str) -> dict[str, str]:
    return {"x-offload-job-id": job or uuid.uuid4().hex, **FAST, **extra}


async def read_stream(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    return [
        line.removeprefix("data: ")
        async for line in response.aiter_lines()
        if line.startswith("data: ")
    ]


async def calls(http: httpx.AsyncClient, job: str) -> list[dict[str, Any]]:
    answer = await http.get("/v1/sandbox/llm/calls", params={"job": job})
    assert answer.status_code == 200
    listed: list[dict[str, Any]] = answer.json()["calls"]
    return listed


async def test_non_streaming_answer_is_an_openai_completion_derived_from_the_prompt(
    http: httpx.AsyncClient,
) -> None:
    first = await http.post("/v1/chat/completions", json=body(), headers=job_headers())
    again = await http.post("/v1/chat/completions", json=body(), headers=job_headers())
    other = await http.post("/v1/chat/completions", json=body("Why is grass green?"), headers=FAST)

    assert first.status_code == 200
    completion = first.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "sandbox"
    [choice] = completion["choices"]
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text and text.endswith(".")
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["prompt_tokens"] == 5
    assert usage["completion_tokens"] == len(text.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert again.json()["choices"][0]["message"]["content"] == text
    assert other.json()["choices"][0]["message"]["content"] != text


async def test_streaming_sends_openai_chunks_then_usage_then_done(
    http: httpx.AsyncClient,
) -> None:
    request = body(stream=True, stream_options={"include_usage": True})
    async with http.stream(
        "POST", "/v1/chat/completions", json=request, headers=job_headers()
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = await read_stream(response)

    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content_chunks, finish, usage_chunk = chunks[1:]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
    assert usage_chunk["usage"]["completion_tokens"] == len(content_chunks)
    # Streamed or not, the same prompt gets the same text.
    whole = await http.post("/v1/chat/completions", json=body(), headers=job_headers())
    assert whole.json()["choices"][0]["message"]["content"] == text


async def test_streaming_without_include_usage_sends_no_usage_chunk(
    http: httpx.AsyncClient,
) -> None:
    async with http.stream(
        "POST", "/v1/chat/completions", json=body(stream=True), headers=job_headers()
    ) as response:
        payloads = await read_stream(response)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    http: httpx.AsyncClient, field: str
) -> None:
    answer = await http.post("/v1/chat/completions", json=body(**{field: 7}), headers=job_headers())
    completion = answer.json()
    assert completion["usage"]["completion_tokens"] == 7
    assert len(completion["choices"][0]["message"]["content"].split()) == 7
    assert completion["choices"][0]["finish_reason"] == "length"


async def test_time_to_first_token_and_tokens_per_second_pace_the_stream(
    http: httpx.AsyncClient,
) -> None:
    pace = {"x-sandbox-ttft-ms": "300", "x-sandbox-tokens-per-s": "50"}
    headers = {"x-offload-job-id": uuid.uuid4().hex, **pace}
    began = time.perf_counter()
    first_token_at = None
    async with http.stream(
        "POST", "/v1/chat/completions", json=body(stream=True, max_tokens=11), headers=headers
    ) as response:
        async for line in response.aiter_lines():
            if first_token_at is None and '"content":"' in line and '"content":""' not in line:
                first_token_at = time.perf_counter() - began
    total = time.perf_counter() - began

    assert first_token_at is not None
    print(f"first token after {first_token_at:.3f}s, 11 tokens after {total:.3f}s")
    assert first_token_at >= 0.3
    assert total >= 0.3 + 10 / 50  # the 11th token is due 10 intervals after the first


async def test_sandbox_fail_n_answers_503_for_the_first_n_calls_of_a_job(
    http: httpx.AsyncClient,
) -> None:
    job = uuid.uuid4().hex
    request = body(model="sandbox-fail-2")
    statuses = [
        (await http.post("/v1/chat/completions", json=request, headers=job_headers(job)))
        for _ in range(3)
    ]
    other_job = await http.post("/v1/chat/completions", json=request, headers=job_headers())

    assert [r.status_code for r in statuses] == [503, 503, 200]
    error = statuses[0].json()["error"]
    assert error["type"] == "server_error" and "call 1 of job" in error["message"]
    assert other_job.status_code == 503  # another job has its own count
    assert [(c["index"], c["status"], c["outcome"]) for c in await calls(http, job)] == [
        (1, 503, "failed"),
        (2, 503, "failed"),
        (3, 200, "completed"),
    ]


async def test_the_user_field_names_the_job_when_there_is_no_header(
    http: httpx.AsyncClient,
) -> None:
    job = uuid.uuid4().hex
    request = body(model="sandbox-fail-1", user=job)
    first = await http.post("/v1/chat/completions", json=request, headers=FAST)
    second = await http.post("/v1/chat/completions", json=request, headers=FAST)
    assert (first.status_code, second.status_code) == (503, 200)
    assert len(await calls(http, job)) == 2


async def test_sandbox_fail_at_k_fails_only_the_kth_call(http: httpx.AsyncClient) -> None:
    job = uuid.uuid4().hex
    request = body(model="sandbox-fail-at-2")
    statuses = [
        (await http.post("/v1/chat/completions", json=request, headers=job_headers(job)))
        for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 503, 200]


async def test_sandbox_reject_always_answers_400(http: httpx.AsyncClient) -> None:
    job = uuid.uuid4().hex
    for _ in range(2):
        answer = await http.post(
            "/v1/chat/completions", json=body(model="sandbox-reject"), headers=job_headers(job)
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "sandbox_rejected"
    assert [c["outcome"] for c in await calls(http, job)] == ["rejected", "rejected"]


async def test_sandbox_ratelimit_answers_429_with_retry_after(http: httpx.AsyncClient) -> None:
    job = uuid.uuid4().hex
    request = body(model="sandbox-ratelimit-1")
    limited = await http.post("/v1/chat/completions", json=request, headers=job_headers(job))
    served = await http.post("/v1/chat/completions", json=request, headers=job_headers(job))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert served.status_code == 200


async def test_sandbox_drop_ends_the_stream_early_without_done(http: httpx.AsyncClient) -> None:
    job = uuid.uuid4().hex
    request = body(model="sandbox-drop-1", stream=True)
    async with http.stream(
        "POST", "/v1/chat/completions", json=request, headers=job_headers(job)
    ) as response:
        dropped = await read_stream(response)
    async with http.stream(
        "POST", "/v1/chat/completions", json=request, headers=job_headers(job)
    ) as response:
        whole = await read_stream(response)

    assert dropped[-1] != "[DONE]"
    assert all(json.loads(p)["choices"][0]["finish_reason"] is None for p in dropped)
    assert whole[-1] == "[DONE]"
    assert len(dropped) < len(whole)
    assert [c["outcome"] for c in await calls(http, job)] == ["dropped", "completed"]


async def test_a_client_that_goes_away_mid_stream_is_recorded_as_disconnected(
    http: httpx.AsyncClient,
) -> None:
    job = uuid.uuid4().hex
    slow = {"x-offload-job-id": job, "x-sandbox-ttft-ms": "0", "x-sandbox-tokens-per-s": "20"}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body(stream=True), headers=slow
    ) as response:
        async for line in response.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # leaving the block closes the connection mid-stream

    await wait_until(
        lambda: calls(http, job),
        lambda found: found[0]["outcome"] != "streaming",
        timeout=5,
        what="the sandbox seeing the client go away",
        interval=0.02,
    )
    [call] = await calls(http, job)
    assert call["outcome"] == "disconnected"
    assert call["completion_tokens"] < 10


@pytest.mark.parametrize(
    ("request_body", "status", "needle"),
    [
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "gpt-4o"),
        ({"model": "sandbox", "messages": []}, 400, "messages"),
        ({"model": "sandbox"}, 400, "messages"),
        (
            {"model": "sandbox", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ("not json", 400, "JSON"),
    ],
)
async def test_bad_requests_get_an_openai_error(
    http: httpx.AsyncClient, request_body: Any, status: int, needle: str
) -> None:
    if isinstance(request_body, str):
        answer = await http.post(
            "/v1/chat/completions",
            content=request_body,
            headers={"content-type": "application/json"},
        )
    else:
        answer = await http.post("/v1/chat/completions", json=request_body)
    assert answer.status_code == status
    assert needle in answer.json()["error"]["message"]


async def test_bad_pacing_headers_are_refused(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/v1/chat/completions", json=body(), headers={"x-sandbox-tokens-per-s": "0"}
    )
    assert answer.status_code == 400
    assert "x-sandbox-tokens-per-s" in answer.json()["error"]["message"]
