"""Settings of the ai service: the worker's, plus the LLM provider's (`OFFLOAD_LLM_*`)."""

from pydantic import Field

from offload_runtime.llm.openai_compatible import LlmSettings
from offload_runtime.settings import WorkerSettings


class AiSettings(WorkerSettings, LlmSettings):
    """`ai.generate` workers: I/O-bound, so one process holds many calls at once."""

    concurrency: int = Field(
        default=200,
        ge=1,
        description="LLM calls one process streams at once (= prefetch); they wait on the "
        "network, not the CPU.",
    )
