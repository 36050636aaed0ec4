"""The LLM port: what the ai and research domains ask of a chat model.

Domain code depends on `ChatModel` only; the service wires the httpx adapter
(`openai_compatible.OpenAICompatibleClient`) in production and a fake in
unit tests.
"""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the conversation sent to the model."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to stream.

    `model` None means the adapter's configured model; `job_id` is sent to the
    provider as the `X-Offload-Job-Id` header (the sandbox counts calls by it).
    """

    messages: Sequence[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token accounting; `estimated` when the provider reported none."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """A piece of a streamed answer.

    Every chunk but the last carries new `text`. The last has `done` set, and
    with it the model that answered, the usage and the finish reason.
    """

    text: str = ""
    done: bool = False
    model: str | None = None
    usage: TokenUsage | None = None
    finish_reason: str | None = None


class ChatModel(Protocol):
    """A chat model that streams its answer.

    `stream` raises `TransientError` (rate limits, 5xx, timeouts, dropped
    streams; `retry_after` set when the provider asked for it) or
    `PermanentError` (any other refusal, with the provider's message).
    Cancelling the consuming task closes the stream at once.
    """

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer, gathered from a stream."""

    text: str
    model: str
    usage: TokenUsage | None
    finish_reason: str | None


async def collect(model: ChatModel, request: ChatRequest) -> Completion:
    """Stream `request` to the end and return the whole answer."""
    parts: list[str] = []
    last = ChatChunk()
    async for chunk in model.stream(request):
        if chunk.done:
            last = chunk
        else:
            parts.append(chunk.text)
    return Completion(
        text="".join(parts),
        model=last.model or request.model or "",
        usage=last.usage,
        finish_reason=last.finish_reason,
    )
