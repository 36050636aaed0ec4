"""The ai worker's handler, as its `build_app` wires it, on FastStream's test broker.

A request is decoded, the LLM the worker was given answers it, and the job
is recorded completed, failed or delayed with its next attempt sent on; the
LLM is a scripted fake (tests/support/fake_llm.py).
"""

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from faststream.rabbit import TestRabbitBroker

from offload_ai.app import AiDeps, build_app
from offload_ai.settings import AiSettings
from offload_contracts import (
    AiGenerateInput,
    AiGenerateRequest,
    EventKind,
    JobRequestBase,
    JobStatus,
    topology,
)
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.llm.ports import ChatRequest
from tests.support.component import ComponentRig
from tests.support.fake_llm import FakeChatModel, Reply
from tests.support.infra import Infra
from tests.support.rig import job_events


def reply(request: ChatRequest, n: int) -> Reply:
    prompt = request.messages[-1].content
    if prompt == "refuse":
        return PermanentError("the provider refused the prompt")
    if prompt == "busy":
        return TransientError("the provider is busy")
    return f"echo: {prompt}"


def ai_request(prompt: str, **input_fields: object) -> JobRequestBase[AiGenerateInput]:
    return AiGenerateRequest.model_validate(
        {
            "id": uuid.uuid4().hex,
            "tenant": "acme",
            "max_attempts": 3,
            "created_at": datetime.now(UTC),
            "input": {"prompt": prompt, **input_fields},
        }
    )


@pytest.fixture
def llm() -> FakeChatModel:
    return FakeChatModel(reply=reply)


@pytest.fixture
async def ai(infra: Infra, llm: FakeChatModel) -> AsyncIterator[ComponentRig]:
    settings = AiSettings(
        rabbitmq_url=infra.rabbitmq_url,
        redis_url=infra.redis_url,
        redis_prefix=f"{infra.redis_prefix}ai-component-{uuid.uuid4().hex[:8]}:",
        retry_tiers="1s,10s",
        log_level="warning",
    )
    rig = ComponentRig(build_app(settings, AiDeps(llm=llm)), service="ai")
    async with TestRabbitBroker(rig.worker.broker):
        yield rig
    await rig.store.aclose()


async def test_a_request_is_answered_by_the_llm_and_recorded_completed(
    ai: ComponentRig, llm: FakeChatModel
) -> None:
    request = await ai.submit(ai_request("hello there", system="Be brief.", max_tokens=8))

    record = await ai.store.get(request.id)
    assert record is not None and record.status is JobStatus.COMPLETED
    assert record.result == {
        "text": "echo: hello there",
        "model": "fake-model",
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }
    [asked] = llm.requests
    assert [(m.role, m.content) for m in asked.messages] == [
        ("system", "Be brief."),
        ("user", "hello there"),
    ]
    assert asked.max_tokens == 8 and asked.job_id == request.id
    kinds = [event.event for event in await job_events(ai.store, request.id)]
    assert kinds[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert kinds[-1] == EventKind.COMPLETED and kinds.count(EventKind.COMPLETED) == 1
    assert ai.retried == [] and ai.dead == []


async def test_a_provider_refusal_fails_the_job_at_once_with_its_message(ai: ComponentRig) -> None:
    request = await ai.submit(ai_request("refuse"))

    record = await ai.store.get(request.id)
    assert record is not None and record.status is JobStatus.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "permanent"
    assert record.error.message == "the provider refused the prompt"
    [parked] = ai.dead
    assert parked.headers[topology.HEADER_ERROR] == "the provider refused the prompt"
    assert ai.retried == []


async def test_a_busy_provider_delays_the_job_and_sends_its_next_attempt(ai: ComponentRig) -> None:
    request = await ai.submit(ai_request("busy"))

    record = await ai.store.get(request.id)
    assert record is not None and record.status is JobStatus.DELAYED
    assert record.error is not None and record.error.message == "the provider is busy"
    [retry] = ai.retried
    again = AiGenerateRequest.model_validate_json(retry.body)
    assert again.id == request.id and again.attempt == 2 and again.input == request.input
    assert ai.dead == []


async def test_a_request_with_a_bad_input_fails_its_job_as_invalid(
    ai: ComponentRig, llm: FakeChatModel
) -> None:
    request = await ai.record(ai_request("never asked"))
    body = request.model_dump(mode="json")
    body["input"]["max_tokens"] = 0  # below the contract's minimum

    await ai.send(json.dumps(body).encode())

    record = await ai.store.get(request.id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.error is not None and record.error.type == "invalid_message"
    assert "input.max_tokens" in record.error.message
    [parked] = ai.dead
    assert parked.headers[topology.HEADER_ERROR_TYPE] == "invalid_message"
    assert llm.requests == []
