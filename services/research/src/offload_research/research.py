"""`research.run`: plan → sub-questions → an answer for each → a synthesized report.

Each step's output is checkpointed under the job (`plan`, `answer:1`…`answer:N`,
`report`), so a retry after a failure resumes at the step that failed: what
an earlier attempt already paid for is never asked of the model again.

Domain code: it knows the LLM port and the job context, nothing of brokers,
Redis or HTTP.
"""

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from offload_contracts import ResearchRunInput, ResearchRunResult
from offload_contracts.jobs import ResearchStep
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.llm.ports import ChatMessage, ChatModel, ChatRequest, collect
from offload_runtime.ports import JobContext

PLAN = "plan"
REPORT = "report"

PLAN_SYSTEM = (
    "You are a research planner. Break the user's question into exactly {n} "
    "self-contained sub-questions that together answer it. Reply with the "
    "sub-questions only, one per line, without numbering or commentary."
)
ANSWER_SYSTEM = (
    "You are a careful researcher. Answer the sub-question concisely and factually, "
    "in the context of the main question. Say what is uncertain."
)
REPORT_SYSTEM = (
    "You are a research writer. Using only the findings given, write a clear, "
    "well-structured report that answers the main question, and end with a short conclusion."
)

MAX_SUB_QUESTION_CHARS = 1000

_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|#+)\s*")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


@dataclass(frozen=True)
class ResearchLimits:
    """How the chain calls the model: parallel answers and output limits per step."""

    answer_concurrency: int = 3
    plan_max_tokens: int = 300
    answer_max_tokens: int = 600
    report_max_tokens: int = 1500


def answer_step(index: int) -> str:
    """The checkpoint name of sub-question `index` (from 1)."""
    return f"answer:{index}"


def plan_messages(question: str, n: int) -> list[ChatMessage]:
    return [
        ChatMessage("system", PLAN_SYSTEM.format(n=n)),
        ChatMessage("user", f"Question: {question}"),
    ]


def answer_messages(question: str, sub_question: str) -> list[ChatMessage]:
    return [
        ChatMessage("system", ANSWER_SYSTEM),
        ChatMessage("user", f"Sub-question: {sub_question}\n\nMain question: {question}"),
    ]


def report_messages(question: str, steps: Sequence[ResearchStep]) -> list[ChatMessage]:
    findings = "\n\n".join(
        f"{i}. {step.question}\n{step.answer}" for i, step in enumerate(steps, start=1)
    )
    return [
        ChatMessage("system", REPORT_SYSTEM),
        ChatMessage("user", f"Findings for the question: {question}\n\n{findings}"),
    ]


def parse_plan(text: str, n: int) -> list[str]:
    """The first `n` sub-questions of a plan.

    One per line, as asked (bullets and numbering stripped, headings such as
    "Here are the sub-questions:" skipped); a model that wrote one paragraph
    instead is read sentence by sentence. Too few is a transient error: a new
    attempt may plan better.
    """
    lines = [_BULLET.sub("", line).strip() for line in text.splitlines()]
    items = [line for line in lines if line and not line.endswith(":")]
    if len(items) < n:
        flat = " ".join(text.split())
        items = [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]
    if len(items) < n:
        raise TransientError(
            f"the model's plan named {len(items)} sub-questions where {n} were asked for"
        )
    return [item[:MAX_SUB_QUESTION_CHARS] for item in items[:n]]


def _most_serious(failures: Sequence[BaseException]) -> BaseException:
    """A permanent failure wins (retrying cannot help), then the first one."""
    for failure in failures:
        if not isinstance(failure, Exception):
            return failure  # cancellation: let it through untouched
    return next((f for f in failures if isinstance(f, PermanentError)), failures[0])


async def run_research(
    spec: ResearchRunInput, llm: ChatModel, ctx: JobContext, limits: ResearchLimits
) -> ResearchRunResult:
    """Run the chain, resuming after the last checkpointed step."""
    n = spec.steps
    calls = n + 2  # plan, n answers, report: progress is the share of calls done

    def request(messages: list[ChatMessage], max_tokens: int) -> ChatRequest:
        return ChatRequest(messages, model=spec.model, max_tokens=max_tokens, job_id=ctx.job_id)

    # Step 1: the plan.
    saved_plan = await ctx.load_checkpoint(PLAN)
    if saved_plan is not None:
        sub_questions: list[str] = json.loads(saved_plan)
    else:
        await ctx.progress(0, f"plan: splitting the question into {n} sub-questions")
        plan = await collect(llm, request(plan_messages(spec.question, n), limits.plan_max_tokens))
        sub_questions = parse_plan(plan.text, n)
        await ctx.save_checkpoint(PLAN, json.dumps(sub_questions))

    # Step 2: the answers, a few at a time; each saved as soon as it arrives.
    answers: dict[int, str] = {}
    for index in range(1, n + 1):
        saved = await ctx.load_checkpoint(answer_step(index))
        if saved is not None:
            answers[index] = saved
    missing = [index for index in range(1, n + 1) if index not in answers]
    if missing:
        await ctx.progress(
            100 * (1 + len(answers)) / calls,
            f"answers: researching {len(missing)} of {n} sub-questions",
        )
    gate = asyncio.Semaphore(limits.answer_concurrency)

    async def answer(index: int) -> None:
        async with gate:
            reply = await collect(
                llm,
                request(
                    answer_messages(spec.question, sub_questions[index - 1]),
                    limits.answer_max_tokens,
                ),
            )
        await ctx.save_checkpoint(answer_step(index), reply.text)
        answers[index] = reply.text
        if len(answers) < n:  # the last answer is announced by the report step
            await ctx.progress(
                100 * (1 + len(answers)) / calls,
                f"answers: {len(answers)} of {n} sub-questions answered",
            )

    # A failed answer does not stop its siblings: what they finish is saved,
    # so the retry only asks again for what failed.
    outcomes = await asyncio.gather(*(answer(i) for i in missing), return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise _most_serious(failures)
    steps = [
        ResearchStep(question=sub_questions[i - 1], answer=answers[i]) for i in range(1, n + 1)
    ]

    # Step 3: the report.
    report = await ctx.load_checkpoint(REPORT)
    if report is None:
        await ctx.progress(100 * (n + 1) / calls, "synthesis: writing the report")
        written = await collect(
            llm, request(report_messages(spec.question, steps), limits.report_max_tokens)
        )
        report = written.text
        await ctx.save_checkpoint(REPORT, report)
    return ResearchRunResult(report=report, steps=steps)
