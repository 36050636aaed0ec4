"""`ai.generate`: one chat completion, streamed, with progress as tokens arrive.

Domain code: it knows the LLM port and the job context, nothing of brokers,
Redis or HTTP.
"""

from offload_contracts import AiGenerateInput, AiGenerateResult
from offload_contracts.jobs import Usage
from offload_runtime.llm.ports import ChatChunk, ChatMessage, ChatModel, ChatRequest
from offload_runtime.ports import JobContext


def chat_request(spec: AiGenerateInput, job_id: str) -> ChatRequest:
    """The chat completion a job's input asks for."""
    messages = [ChatMessage("system", spec.system)] if spec.system else []
    messages.append(ChatMessage("user", spec.prompt))
    return ChatRequest(
        messages=messages,
        model=spec.model,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        job_id=job_id,
    )


async def generate(spec: AiGenerateInput, llm: ChatModel, ctx: JobContext) -> AiGenerateResult:
    """Stream the completion; report progress as a share of `max_tokens` and characters so far.

    Progress is reported on every chunk; the job context throttles it to two
    events a second, so a fast stream costs no more than a slow one.
    """
    parts: list[str] = []
    characters = chunks = 0
    final = ChatChunk(done=True)
    async for chunk in llm.stream(chat_request(spec, ctx.job_id)):
        if chunk.done:
            final = chunk
            continue
        parts.append(chunk.text)
        characters += len(chunk.text)
        chunks += 1  # one streamed chunk is about one token
        await ctx.progress(
            min(99.0, 100 * chunks / spec.max_tokens), f"{characters} characters generated"
        )
    usage = final.usage
    return AiGenerateResult(
        text="".join(parts),
        model=final.model or spec.model or "unknown",
        usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else chunks,
            total_tokens=usage.total_tokens if usage else chunks,
        ),
    )
