"""The ai service's job handlers: decode, call the domain, return."""

from offload_ai.generation import generate
from offload_contracts import AI_GENERATE, AiGenerateInput, AiGenerateResult, JobRequestBase
from offload_runtime.llm.ports import ChatModel
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_runtime.worker import job_handler


def on_ai_generate(llm: ChatModel) -> JobHandler[JobRequestBase[AiGenerateInput]]:
    """`ai.generate` → `generation.generate` with the given LLM."""

    async def run(request: JobRequestBase[AiGenerateInput], ctx: JobContext) -> AiGenerateResult:
        return await generate(request.input, llm, ctx)

    return job_handler(AI_GENERATE, run)
