"""The ai.generate domain with a fake chat model and job context."""

import pytest

from offload_ai.generation import generate
from offload_contracts import AiGenerateInput
from offload_runtime.errors import PermanentError, TransientError
from tests.support.fake_llm import FakeChatModel, FakeJobContext


async def test_streams_the_completion_into_the_result_with_the_providers_usage() -> None:
    llm = FakeChatModel(reply=lambda request, n: "The sky is blue.")
    ctx = FakeJobContext(job_id="job-42")

    result = await generate(AiGenerateInput(prompt="Why is the sky blue?"), llm, ctx)

    assert result.text == "The sky is blue."
    assert result.model == "fake-model"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 4)
    assert result.usage.total_tokens == 15


async def test_sends_system_prompt_model_limits_and_the_job_id() -> None:
    llm = FakeChatModel()
    spec = AiGenerateInput(
        prompt="Write a haiku.", system="Be brief.", model="m-1", max_tokens=64, temperature=0.2
    )

    result = await generate(spec, llm, FakeJobContext(job_id="job-7"))

    [request] = llm.requests
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Write a haiku."),
    ]
    assert (request.model, request.max_tokens, request.temperature) == ("m-1", 64, 0.2)
    assert request.job_id == "job-7"
    assert result.model == "m-1"


async def test_without_a_system_prompt_only_the_user_message_is_sent() -> None:
    llm = FakeChatModel()
    await generate(AiGenerateInput(prompt="Hello"), llm, FakeJobContext())
    assert [m.role for m in llm.requests[0].messages] == ["user"]


async def test_progress_is_the_share_of_max_tokens_and_the_characters_so_far() -> None:
    llm = FakeChatModel(reply=lambda request, n: "one two three four")
    ctx = FakeJobContext()

    await generate(AiGenerateInput(prompt="count", max_tokens=8), llm, ctx)

    assert ctx.progress_reports == [
        (12.5, "3 characters generated"),
        (25.0, "7 characters generated"),
        (37.5, "13 characters generated"),
        (50.0, "18 characters generated"),
    ]


async def test_progress_stays_below_100_until_the_job_completes() -> None:
    llm = FakeChatModel(reply=lambda request, n: "a b c d e")
    ctx = FakeJobContext()
    await generate(AiGenerateInput(prompt="x", max_tokens=2), llm, ctx)
    assert max(percent for percent, _ in ctx.progress_reports) == 99.0


async def test_usage_is_counted_from_the_stream_when_the_provider_reports_none() -> None:
    llm = FakeChatModel(reply=lambda request, n: "a b c", report_usage=False)
    result = await generate(AiGenerateInput(prompt="x"), llm, FakeJobContext())
    assert (result.usage.completion_tokens, result.usage.total_tokens) == (3, 3)


@pytest.mark.parametrize(
    "error", [TransientError("busy", retry_after=2), PermanentError("bad model")]
)
async def test_provider_errors_reach_the_runner_unchanged(error: Exception) -> None:
    llm = FakeChatModel(reply=lambda request, n: error)
    with pytest.raises(type(error)) as raised:
        await generate(AiGenerateInput(prompt="x"), llm, FakeJobContext())
    assert raised.value is error
