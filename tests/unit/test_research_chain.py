"""The research.run chain with a fake chat model and job context."""

import json
from collections.abc import Callable

import pytest

from offload_contracts import ResearchRunInput
from offload_research.research import (
    PLAN,
    REPORT,
    ResearchLimits,
    answer_step,
    parse_plan,
    run_research,
)
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.llm.ports import ChatRequest
from tests.support.fake_llm import FakeChatModel, FakeJobContext, Reply

LIMITS = ResearchLimits(
    answer_concurrency=2, plan_max_tokens=100, answer_max_tokens=200, report_max_tokens=300
)


def kind(request: ChatRequest) -> str:
    """Which step a call belongs to, from the prompt the chain sends."""
    user = request.messages[-1].content
    if user.startswith("Question:"):
        return "plan"
    if user.startswith("Sub-question:"):
        return "answer"
    return "report"


def scripted(
    plan: str = "Q one?\nQ two?\nQ three?", fail: dict[str, Reply] | None = None
) -> Callable[[ChatRequest, int], Reply]:
    """Answers by step; `fail` maps a sub-question (or 'plan'/'report') to an error."""
    fail = fail or {}

    def reply(request: ChatRequest, n: int) -> Reply:
        step = kind(request)
        if step == "plan":
            return fail.get("plan", plan)
        if step == "answer":
            sub = request.messages[-1].content.split("\n")[0].removeprefix("Sub-question: ")
            return fail.get(sub, f"About {sub}")
        return fail.get("report", "The report.")

    return reply


async def test_plans_answers_each_sub_question_and_synthesizes_a_report() -> None:
    llm = FakeChatModel(reply=scripted())
    ctx = FakeJobContext(job_id="job-r")

    result = await run_research(ResearchRunInput(question="Why?", steps=3), llm, ctx, LIMITS)

    assert [kind(r) for r in llm.requests] == ["plan", "answer", "answer", "answer", "report"]
    assert [(s.question, s.answer) for s in result.steps] == [
        ("Q one?", "About Q one?"),
        ("Q two?", "About Q two?"),
        ("Q three?", "About Q three?"),
    ]
    assert result.report == "The report."
    assert all(r.job_id == "job-r" for r in llm.requests)
    assert [r.max_tokens for r in llm.requests] == [100, 200, 200, 200, 300]
    # The report is written from every finding, in plan order.
    findings = llm.requests[-1].messages[-1].content
    assert findings.index("About Q one?") < findings.index("About Q three?")
    assert "exactly 3" in llm.requests[0].messages[0].content


async def test_each_steps_output_is_checkpointed() -> None:
    ctx = FakeJobContext()
    await run_research(
        ResearchRunInput(question="Why?", steps=3), FakeChatModel(reply=scripted()), ctx, LIMITS
    )
    assert json.loads(ctx.checkpoints[PLAN]) == ["Q one?", "Q two?", "Q three?"]
    assert ctx.checkpoints[answer_step(2)] == "About Q two?"
    assert ctx.checkpoints[REPORT] == "The report."
    assert ctx.saved[0] == PLAN and ctx.saved[-1] == REPORT


async def test_a_retry_resumes_after_the_checkpointed_steps() -> None:
    ctx = FakeJobContext(
        attempt=2,
        checkpoints={
            PLAN: json.dumps(["Q one?", "Q two?", "Q three?"]),
            answer_step(1): "saved one",
            answer_step(3): "saved three",
        },
    )
    llm = FakeChatModel(reply=scripted())

    result = await run_research(ResearchRunInput(question="Why?", steps=3), llm, ctx, LIMITS)

    assert [kind(r) for r in llm.requests] == ["answer", "report"]
    assert "Q two?" in llm.requests[0].messages[-1].content
    assert [s.answer for s in result.steps] == ["saved one", "About Q two?", "saved three"]


async def test_a_fully_checkpointed_job_calls_the_model_no_more() -> None:
    ctx = FakeJobContext(
        checkpoints={
            PLAN: json.dumps(["a?", "b?", "c?"]),
            **{answer_step(i): f"ans {i}" for i in (1, 2, 3)},
            REPORT: "done before",
        }
    )
    llm = FakeChatModel(reply=scripted())
    result = await run_research(ResearchRunInput(question="Why?", steps=3), llm, ctx, LIMITS)
    assert llm.requests == []
    assert result.report == "done before"


async def test_a_failed_answer_keeps_its_siblings_answers_and_raises() -> None:
    llm = FakeChatModel(reply=scripted(fail={"Q two?": TransientError("provider busy")}))
    ctx = FakeJobContext()

    with pytest.raises(TransientError, match="provider busy"):
        await run_research(ResearchRunInput(question="Why?", steps=3), llm, ctx, LIMITS)

    assert set(ctx.checkpoints) == {PLAN, answer_step(1), answer_step(3)}
    assert REPORT not in ctx.checkpoints


async def test_a_permanent_failure_wins_over_a_transient_one() -> None:
    fail: dict[str, Reply] = {
        "Q one?": TransientError("busy"),
        "Q two?": PermanentError("model refused"),
    }
    llm = FakeChatModel(reply=scripted(fail=fail))
    with pytest.raises(PermanentError, match="model refused"):
        await run_research(
            ResearchRunInput(question="Why?", steps=3), llm, FakeJobContext(), LIMITS
        )


async def test_answers_run_at_most_answer_concurrency_at_once() -> None:
    llm = FakeChatModel(reply=scripted(plan="a?\nb?\nc?\nd?\ne?"), delay_s=0.02)
    await run_research(ResearchRunInput(question="Why?", steps=5), llm, FakeJobContext(), LIMITS)
    assert llm.max_in_flight == LIMITS.answer_concurrency


async def test_progress_names_each_step() -> None:
    ctx = FakeJobContext()
    await run_research(
        ResearchRunInput(question="Why?", steps=3), FakeChatModel(reply=scripted()), ctx, LIMITS
    )
    assert ctx.progress_reports == [
        (0, "plan: splitting the question into 3 sub-questions"),
        (20.0, "answers: researching 3 of 3 sub-questions"),
        (40.0, "answers: 1 of 3 sub-questions answered"),
        (60.0, "answers: 2 of 3 sub-questions answered"),
        (80.0, "synthesis: writing the report"),
    ]


async def test_a_plan_with_too_few_sub_questions_is_a_transient_error() -> None:
    llm = FakeChatModel(reply=scripted(plan="Only one"))
    ctx = FakeJobContext()
    with pytest.raises(TransientError, match="named 1 sub-questions where 3 were asked for"):
        await run_research(ResearchRunInput(question="Why?", steps=3), llm, ctx, LIMITS)
    assert PLAN not in ctx.checkpoints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a?\nb?\nc?", ["a?", "b?", "c?"]),
        ("Here are the sub-questions:\n1. a?\n2) b?\n- c?\n* d?", ["a?", "b?", "c?"]),
        ("\n\n  a?  \n\n b? \n c?\n", ["a?", "b?", "c?"]),
        ("What is a? What is b? And c. Also d.", ["What is a?", "What is b?", "And c."]),
        ("### a\n### b\n### c", ["a", "b", "c"]),
    ],
)
def test_parse_plan_reads_lines_or_sentences(text: str, expected: list[str]) -> None:
    assert parse_plan(text, 3) == expected
