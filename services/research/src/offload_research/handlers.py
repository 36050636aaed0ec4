"""The research service's job handlers: decode, call the domain, return."""

from offload_contracts import RESEARCH_RUN, JobRequestBase, ResearchRunInput, ResearchRunResult
from offload_research.research import ResearchLimits, run_research
from offload_runtime.llm.ports import ChatModel
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_runtime.worker import job_handler


def on_research_run(
    llm: ChatModel, limits: ResearchLimits
) -> JobHandler[JobRequestBase[ResearchRunInput]]:
    """`research.run` → `research.run_research` with the given LLM and limits."""

    async def run(request: JobRequestBase[ResearchRunInput], ctx: JobContext) -> ResearchRunResult:
        return await run_research(request.input, llm, ctx, limits)

    return job_handler(RESEARCH_RUN, run)
