"""The ai service's job handlers: decode, call the domain, return."""

from offload_ai.generation import generate
from offload_contracts import POLICIES, AiGenerateRequest, AiGenerateResult
from offload_runtime.llm.ports import ChatModel
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler


def on_ai_generate(llm: ChatModel) -> JobHandler[AiGenerateRequest]:
    """`ai.generate` → `generation.generate` with the given LLM."""

    async def run(request: AiGenerateRequest, ctx: JobContext) -> AiGenerateResult:
        return await generate(request.input, llm, ctx)

    return JobHandler(AiGenerateRequest, run, POLICIES["ai.generate"])
