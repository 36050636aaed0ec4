"""Wiring of the ai service: settings, the LLM adapter, the `ai.generate` handler."""

from dataclasses import dataclass

from offload_ai.handlers import on_ai_generate
from offload_ai.settings import AiSettings
from offload_contracts import AI_GENERATE
from offload_runtime.llm.openai_compatible import OpenAICompatibleClient
from offload_runtime.llm.ports import ChatModel
from offload_runtime.worker import Hook, Worker, build_worker

SERVICE = AI_GENERATE.service


@dataclass(frozen=True)
class AiDeps:
    """What the ai service talks to; a test may pass its own."""

    llm: ChatModel


def build_app(settings: AiSettings | None = None, deps: AiDeps | None = None) -> Worker:
    """The ai worker. No I/O until it starts; the LLM client closes when it stops."""
    settings = settings or AiSettings()
    on_stop: list[Hook] = []
    if deps is None:
        client = OpenAICompatibleClient(settings)
        on_stop.append(client.aclose)
        deps = AiDeps(llm=client)
    return build_worker(
        service=SERVICE,
        settings=settings,
        handlers=[on_ai_generate(deps.llm)],
        on_stop=on_stop,
    )
