"""Wiring of the research service: settings, the LLM adapter, the `research.run` handler."""

from dataclasses import dataclass

from offload_contracts import RESEARCH_RUN
from offload_research.handlers import on_research_run
from offload_research.research import ResearchLimits
from offload_research.settings import ResearchSettings
from offload_runtime.llm.openai_compatible import OpenAICompatibleClient
from offload_runtime.llm.ports import ChatModel
from offload_runtime.worker import Hook, Worker, build_worker

SERVICE = RESEARCH_RUN.service


@dataclass(frozen=True)
class ResearchDeps:
    """What the research service talks to; a test may pass its own."""

    llm: ChatModel


def build_app(settings: ResearchSettings | None = None, deps: ResearchDeps | None = None) -> Worker:
    """The research worker. No I/O until it starts; the LLM client closes when it stops."""
    settings = settings or ResearchSettings()
    on_stop: list[Hook] = []
    if deps is None:
        client = OpenAICompatibleClient(settings)
        on_stop.append(client.aclose)
        deps = ResearchDeps(llm=client)
    limits = ResearchLimits(
        answer_concurrency=settings.research_answer_concurrency,
        plan_max_tokens=settings.research_plan_max_tokens,
        answer_max_tokens=settings.research_answer_max_tokens,
        report_max_tokens=settings.research_report_max_tokens,
    )
    return build_worker(
        service=SERVICE,
        settings=settings,
        handlers=[on_research_run(deps.llm, limits)],
        on_stop=on_stop,
    )
