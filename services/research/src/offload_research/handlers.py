"""The research service's job handlers: decode, call the domain, return."""

from offload_contracts import POLICIES, ResearchRunRequest, ResearchRunResult
from offload_research.research import ResearchLimits, run_research
from offload_runtime.llm.ports import ChatModel
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler


def on_research_run(llm: ChatModel, limits: ResearchLimits) -> JobHandler[ResearchRunRequest]:
    """`research.run` → `research.run_research` with the given LLM and limits."""

    async def run(request: ResearchRunRequest, ctx: JobContext) -> ResearchRunResult:
        return await run_research(request.input, llm, ctx, limits)

    return JobHandler(ResearchRunRequest, run, POLICIES["research.run"])
