"""Fakes for the ai and research domains' unit tests: a scripted chat model and a job context."""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from offload_runtime.llm.ports import ChatChunk, ChatRequest, TokenUsage

Reply = str | BaseException
"""What the fake answers one call with: a text (streamed word by word) or an error to raise."""


@dataclass
class FakeChatModel:
    """Answers each call with `reply(request, call_number)`; records every request.

    `delay_s` makes each call take that long, so tests can watch concurrency.
    """

    reply: Callable[[ChatRequest, int], Reply] = lambda request, n: f"answer {n}."
    delay_s: float = 0.0
    model: str = "fake-model"
    report_usage: bool = True
    requests: list[ChatRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self.requests.append(request)
        number = len(self.requests)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            answer = self.reply(request, number)
            if isinstance(answer, BaseException):
                raise answer
            words = answer.split(" ")
            for i, word in enumerate(words):
                yield ChatChunk(text=word if i == 0 else " " + word)
            usage = TokenUsage(prompt_tokens=11, completion_tokens=len(words))
            yield ChatChunk(
                done=True,
                model=request.model or self.model,
                usage=usage if self.report_usage else None,
                finish_reason="stop",
            )
        finally:
            self.in_flight -= 1


@dataclass
class FakeJobContext:
    """A JobContext that records progress and keeps checkpoints in a dict."""

    job_id: str = "job-1"
    tenant: str = "acme"
    attempt: int = 1
    cancel_requested: bool = False
    checkpoints: dict[str, str] = field(default_factory=dict)
    progress_reports: list[tuple[float, str]] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)

    async def progress(self, percent: float, message: str = "") -> None:
        self.progress_reports.append((percent, message))

    async def load_checkpoint(self, step: str) -> str | None:
        return self.checkpoints.get(step)

    async def save_checkpoint(self, step: str, value: str) -> None:
        self.saved.append(step)
        self.checkpoints[step] = value
