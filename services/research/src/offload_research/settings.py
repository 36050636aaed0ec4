"""Settings of the research service: the worker's, the LLM provider's, and the chain's limits."""

from pydantic import Field

from offload_runtime.llm.openai_compatible import LlmSettings
from offload_runtime.settings import WorkerSettings


class ResearchSettings(WorkerSettings, LlmSettings):
    """`research.run` workers: chains of LLM calls, I/O-bound."""

    concurrency: int = Field(
        default=100,
        ge=1,
        description="Research jobs one process runs at once (= prefetch); each makes up to "
        "`research_answer_concurrency` LLM calls at a time.",
    )
    research_answer_concurrency: int = Field(
        default=3, ge=1, le=5, description="Sub-questions of one job answered at once."
    )
    research_plan_max_tokens: int = Field(
        default=300, ge=16, description="Output limit of the planning call."
    )
    research_answer_max_tokens: int = Field(
        default=600, ge=16, description="Output limit of each sub-question's answer."
    )
    research_report_max_tokens: int = Field(
        default=1500, ge=16, description="Output limit of the final report."
    )
